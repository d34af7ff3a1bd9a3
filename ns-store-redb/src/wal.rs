//! The write-ahead log: what makes a group of writes durable.
//!
//! A redb commit that is synced rewrites every page on the paths it changed and calls
//! `fdatasync`; at low load, where each group holds one write, that was most of the server's
//! work per notification. Instead, every group's changes are appended here as one record
//! (and synced, when a command of the group must be durable), and committed to redb without
//! a sync. Every [`CHECKPOINT_BYTES`] of log, a synced redb commit (the checkpoint) makes
//! everything before it durable in the file itself, records the last sequence number it
//! holds, and the log starts again from its beginning.
//!
//! At open, the records after the checkpoint's sequence number are applied again, in order,
//! until the first one that is missing, torn or older: what is on disk after a crash is
//! always every group up to some point, never a later group without an earlier one.
//!
//! A record: the payload's length (4 bytes, little-endian), a CRC-32 of the sequence number
//! and the payload (4), the sequence number (8), then the payload: [`Op`]s as
//! [`encode_ops`] writes them. The file is grown with zeros a mebibyte at a time, so that a
//! sync of a record rarely has to write the file's size too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Log written between two checkpoints, at most (one record may pass it).
pub(crate) const CHECKPOINT_BYTES: u64 = 8 << 20;
/// How much the file grows at a time.
const GROW_BYTES: u64 = 1 << 20;
const HEADER: usize = 16;
/// A record longer than this is not one the log wrote: replay stops there.
const MAX_RECORD: usize = 1 << 30;

/// Which table an [`Op`] changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Uas = 1,
    Apps = 2,
    Registrations = 3,
    Notifications = 4,
    Payloads = 5,
    Deliveries = 6,
}

impl Table {
    fn from_byte(b: u8) -> Option<Table> {
        Some(match b {
            1 => Table::Uas,
            2 => Table::Apps,
            3 => Table::Registrations,
            4 => Table::Notifications,
            5 => Table::Payloads,
            6 => Table::Deliveries,
            _ => return None,
        })
    }
}

/// One change to one table: `value` is put at `key`, or the key removed when it is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) table: Table,
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
}

/// Each op: its table (1 byte), the key's length (4, little-endian) and bytes, then 0 for a
/// removal, or 1, the value's length (4) and bytes.
pub(crate) fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let size = ops
        .iter()
        .map(|op| 10 + op.key.len() + op.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(size);
    for op in ops {
        out.push(op.table as u8);
        put_bytes(&mut out, op.key.as_bytes());
        match &op.value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                put_bytes(&mut out, value);
            }
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The ops of a payload [`encode_ops`] wrote; `None` if it is not one.
pub(crate) fn decode_ops(mut bytes: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?);
        take(bytes, usize::try_from(len).ok()?)
    }
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let table = Table::from_byte(take(&mut bytes, 1)?[0])?;
        let key = std::str::from_utf8(take_bytes(&mut bytes)?)
            .ok()?
            .to_owned();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => Some(take_bytes(&mut bytes)?.to_vec()),
            _ => return None,
        };
        ops.push(Op { table, key, value });
    }
    Some(ops)
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// A record read back: its sequence number and payload.
pub(crate) type Record = (u64, Vec<u8>);

/// The log file, written by the store's writer thread only.
pub(crate) struct Wal {
    file: File,
    /// Where the next record goes.
    offset: u64,
    /// The file's length: zeros past the last record written.
    allocated: u64,
    /// The sequence number of the next record.
    next_seq: u64,
}

impl Wal {
    /// Opens (or creates) the log and reads the records that follow `checkpoint`, the
    /// sequence number the store's file holds, in order. The log then starts again after
    /// them, so the caller must make them durable in the store before appending.
    pub(crate) fn open(path: &Path, checkpoint: u64) -> io::Result<(Wal, Vec<Record>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let allocated = file.metadata()?.len();
        let mut records = Vec::new();
        let mut offset = 0;
        let mut seq = checkpoint.wrapping_add(1);
        while let Some((payload, next)) = read_record(&file, offset, allocated, seq)? {
            records.push((seq, payload));
            offset = next;
            seq = seq.wrapping_add(1);
        }
        let wal = Wal {
            file,
            offset: 0,
            allocated,
            next_seq: seq,
        };
        Ok((wal, records))
    }

    /// Another handle on the log's file, to sync it from another thread.
    pub(crate) fn file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// The sequence number of the last record appended (or replayed).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.wrapping_sub(1)
    }

    /// Bytes of log since the last checkpoint.
    pub(crate) fn written(&self) -> u64 {
        self.offset
    }

    /// Appends one record, not synced: a sync of the file (the store's syncer) makes it and
    /// every record before it durable. Returns where it starts, for [`Wal::undo`].
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        let seq = self.next_seq;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| (l as usize) < MAX_RECORD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&checksum(seq, payload).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(payload);
        let start = self.offset;
        let end = start + record.len() as u64;
        self.grow_to(end)?;
        self.file.write_all_at(&record, start)?;
        self.offset = end;
        self.next_seq = seq.wrapping_add(1);
        Ok(start)
    }

    /// Takes back the last record, which starts at `start` (its group failed to commit to
    /// the store): it is overwritten with zeros and synced, so that no replay applies it.
    pub(crate) fn undo(&mut self, start: u64) -> io::Result<()> {
        self.file.write_all_at(&[0; HEADER], start)?;
        self.file.sync_data()?;
        self.offset = start;
        self.next_seq = self.next_seq.wrapping_sub(1);
        Ok(())
    }

    /// Starts the log again from its beginning, once the store's file holds every record
    /// durably (a checkpoint). Records left behind have older sequence numbers: a replay
    /// stops at them.
    pub(crate) fn restart(&mut self) {
        self.offset = 0;
    }

    /// Makes the file at least `end` bytes long, with zeros written (not a hole, whose
    /// first write would change the file's metadata at every sync).
    fn grow_to(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0; usize::try_from(GROW_BYTES).unwrap_or(1 << 20)];
        while self.allocated < target {
            let n = (target - self.allocated).min(GROW_BYTES);
            self.file
                .write_all_at(&zeros[..n as usize], self.allocated)?;
            self.allocated += n;
        }
        Ok(())
    }
}

/// The record at `offset` if it is whole and numbered `seq`: its payload and where the next
/// one starts.
fn read_record(file: &File, offset: u64, len: u64, seq: u64) -> io::Result<Option<(Vec<u8>, u64)>> {
    if offset + HEADER as u64 > len {
        return Ok(None);
    }
    let mut header = [0; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let (size, rest) = header.split_at(4);
    let (crc, found) = rest.split_at(4);
    let size = u32::from_le_bytes(size.try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    let found = u64::from_le_bytes(found.try_into().unwrap_or_default());
    let start = offset + HEADER as u64;
    if found != seq || size >= MAX_RECORD || start + size as u64 > len {
        return Ok(None);
    }
    let mut payload = vec![0; size];
    file.read_exact_at(&mut payload, start)?;
    if checksum(seq, &payload) != crc {
        return Ok(None);
    }
    Ok(Some((payload, start + size as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            Op {
                table: Table::Notifications,
                key: "m1".into(),
                value: Some(b"{\"a\":1}".to_vec()),
            },
            Op {
                table: Table::Deliveries,
                key: "m1\0u".into(),
                value: None,
            },
            Op {
                table: Table::Registrations,
                key: "a\0u".into(),
                value: Some(Vec::new()),
            },
        ]
    }

    #[test]
    fn ops_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_ops(&encode_ops(&ops())), Some(ops()));
        assert_eq!(decode_ops(&[]), Some(Vec::new()));
        let encoded = encode_ops(&ops());
        for cut in 1..encoded.len() {
            let decoded = decode_ops(&encoded[..cut]);
            assert!(
                decoded.as_ref().is_none_or(|d| d.len() < 3),
                "a cut record is never read whole"
            );
        }
        assert_eq!(decode_ops(&[9, 0, 0, 0, 0, 0]), None, "no table 9");
    }

    #[test]
    fn records_after_the_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, replay) = Wal::open(&path, 0).unwrap();
        assert!(replay.is_empty());
        for i in 0..5u8 {
            wal.append(&[i; 3]).unwrap();
        }
        assert_eq!(wal.last_seq(), 5);
        drop(wal);

        let (wal, replay) = Wal::open(&path, 0).unwrap();
        let seqs: Vec<u64> = replay.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(replay[4].1, vec![4; 3]);
        assert_eq!(wal.last_seq(), 5);
        let (_, replay) = Wal::open(&path, 5).unwrap();
        assert!(replay.is_empty(), "all of it is in the store already");
    }

    #[test]
    fn a_restarted_log_stops_at_the_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        for _ in 0..4 {
            wal.append(b"older and longer").unwrap();
        }
        // A checkpoint holds 1..=4.
        wal.restart();
        wal.append(b"new").unwrap();
        drop(wal);
        let (wal, replay) = Wal::open(&path, 4).unwrap();
        assert_eq!(replay, vec![(5, b"new".to_vec())]);
        assert_eq!(wal.last_seq(), 5);
    }

    #[test]
    fn a_torn_or_undone_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, 0).unwrap();
        wal.append(b"one").unwrap();
        let second = wal.append(b"two").unwrap();
        wal.append(b"three").unwrap();
        drop(wal);
        // A flipped byte in the second record's payload.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", second + HEADER as u64).unwrap();
        let (_, replay) = Wal::open(&path, 0).unwrap();
        assert_eq!(replay, vec![(1, b"one".to_vec())]);

        let (mut wal, _) = Wal::open(&path, 1).unwrap();
        let start = wal.append(b"failed").unwrap();
        wal.undo(start).unwrap();
        wal.append(b"retried").unwrap();
        drop(wal);
        let (_, replay) = Wal::open(&path, 1).unwrap();
        assert_eq!(replay, vec![(2, b"retried".to_vec())]);
    }
}
