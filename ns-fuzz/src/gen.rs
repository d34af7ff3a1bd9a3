//! Input generation: a small deterministic RNG, byte-level mutations, and a JSON grammar
//! that knows the protocols' field names and mixes in the values parsers trip on.

/// SplitMix64: fast, good enough to fuzz with, and the same sequence on every platform and
/// version, so a seed always means the same inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items`, which must not be empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// One of `items` by reference, for those that aren't `Copy`.
    pub fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length that is usually short and now and then long, as bugs hide at both ends.
    pub fn len(&mut self, short: usize, long: usize) -> usize {
        if self.one_in(16) {
            self.below(long + 1)
        } else {
            self.below(short + 1)
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Longest input a mutation may grow to: past the largest body any port accepts (64 KiB).
const MAX_INPUT: usize = 80 * 1024;

/// Fragments that mean something to the parsers under test: JSON syntax, escapes, numbers
/// at the edges of their types, base64 and header punctuation, and multi-byte UTF-8.
pub const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "{}",
    "[]",
    "\"\"",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "\\n",
    "\\\"",
    "\\/",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e999",
    "-1e999",
    "1e-400",
    "2592000",
    "2592001",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "0.0000000000000000001",
    "=",
    "==",
    ";",
    " ",
    "\t",
    "-",
    "_",
    "+",
    "/",
    ".",
    "..",
    "é",
    "😀",
    "\u{202e}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "PING",
    "vapid",
    "WebPush",
    "t=",
    "k=",
    "p256ecdsa=",
    "dh=",
    "salt=",
    "aesgcm",
    "aes128gcm",
    "ES256",
    "alg",
    "aud",
    "exp",
    "sub",
    "http://127.0.0.1:8081",
    "command",
    "data",
    "uatoken",
    "watoken",
    "pbkbase64",
    "messageType",
    "messageId",
    "messageIds",
    "channelID",
    "updates",
    "version",
    "AAAA",
    "////",
    "----",
    "____",
];

/// Applies one to four random mutations to `input`; `others` are inputs to splice from.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        mutate_once(rng, input, others);
        if input.len() > MAX_INPUT {
            input.truncate(MAX_INPUT);
        }
    }
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = input.len();
    let at = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(11) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        // Overwrite a byte with an interesting one or any one.
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.pick(&[
                0, 0xff, 0x7f, 0x80, 0xc3, 0xed, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':',
                b'-', b'=', b'.', b' ', b'0', b'9', b'A', b'_', b'/', b'+',
            ]);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next_u64() as u8;
        }
        // Insert random bytes.
        3 => {
            let i = at(rng);
            let n = rng.len(4, 64);
            let bytes = rng.bytes(n);
            input.splice(i..i, bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(len - i) + 1;
            input.drain(i..i + n.min(len - i));
        }
        // Truncate.
        5 => input.truncate(at(rng)),
        // Repeat a range, sometimes many times.
        6 if len > 0 => {
            let i = rng.below(len);
            let n = (rng.below(len - i) + 1).min(64);
            let times = if rng.one_in(8) {
                rng.below(1000)
            } else {
                rng.below(4) + 1
            };
            let chunk = input[i..i + n].repeat(times);
            input.splice(i..i, chunk);
        }
        // Splice in part of another input, or replace the tail with another's.
        7 if !others.is_empty() => {
            let other = rng.pick_ref(others);
            let from = rng.below(other.len() + 1);
            let to = from + rng.below(other.len() - from + 1);
            let i = at(rng);
            if rng.one_in(2) {
                input.truncate(i);
                input.extend_from_slice(&other[from..]);
            } else {
                input.splice(i..i, other[from..to].iter().copied());
            }
        }
        // Insert a dictionary word.
        8 => {
            let i = at(rng);
            let word = rng.pick(DICTIONARY).as_bytes();
            input.splice(i..i, word.iter().copied());
        }
        // Replace a run of digits with an edge-of-type number.
        9 => {
            if let Some(start) = input.iter().position(u8::is_ascii_digit) {
                let end = input[start..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(len, |e| start + e);
                let number = number(rng);
                input.splice(start..end, number.into_bytes());
            }
        }
        // Swap two bytes.
        _ if len > 1 => {
            let (i, j) = (rng.below(len), rng.below(len));
            input.swap(i, j);
        }
        _ => input.push(rng.next_u64() as u8),
    }
}

/// A JSON number, often at the edge of a type or of JSON itself.
pub fn number(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.pick(DICTIONARY_NUMBERS).to_string(),
        1 => (rng.next_u64() as i64).to_string(),
        2 => rng.next_u64().to_string(),
        3 => format!("{}.{}", rng.below(10_000), rng.below(1000)),
        4 => format!("{}e{}", rng.below(100), rng.below(800) as i64 - 400),
        _ => rng.below(2000).to_string(),
    }
}

const DICTIONARY_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.0",
    "-0.0",
    "1.5",
    "1e3",
    "1E3",
    "1e999",
    "-1e999",
    "1e-400",
    "2592000",
    "2592001",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "1e15",
    "1e16",
    "999999999999999",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890123456789",
    "0.1e1",
    "65535",
    "65536",
    "1000",
    "1001",
];

/// Pieces strings are made of: plain text, escapes (some of them invalid), and multi-byte
/// or invisible characters.
const STRING_PIECES: &[&str] = &[
    "a",
    "abc",
    "x",
    " ",
    "  ",
    "-",
    "_",
    "=",
    "é",
    "😀",
    "\u{202e}",
    "\u{feff}",
    "\\u0000",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\udc00x",
    "\\n",
    "\\t",
    "\\\"",
    "\\\\",
    "\\/",
    "\\x41",
    "0",
    "123",
    "-1",
    "1.5",
    "null",
    "PING",
    "{",
    "}",
    "[",
    ",",
    ":",
];

/// A JSON string literal (quotes included) of mixed pieces.
pub fn string(rng: &mut Rng) -> String {
    let mut s = String::from("\"");
    let pieces = rng.len(4, 300);
    for _ in 0..pieces {
        s.push_str(rng.pick(STRING_PIECES));
    }
    s.push('"');
    s
}

/// A JSON string literal of `text`, escaped properly.
pub fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Any JSON value, nested at most a few levels (and now and then far too deep).
pub fn value(rng: &mut Rng, depth: usize) -> String {
    if rng.one_in(200) {
        let n = rng.pick(&[127, 128, 129, 1000]);
        return format!("{}1{}", "[".repeat(n), "]".repeat(n));
    }
    let kinds = if depth > 2 { 6 } else { 8 };
    match rng.below(kinds) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false"]).to_string(),
        2 => number(rng),
        3 | 4 => string(rng),
        5 => rng.pick(DICTIONARY).to_string(),
        6 => {
            let items: Vec<String> = (0..rng.len(3, 40)).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let keys = [
                "a",
                "version",
                "code",
                "ip",
                "port",
                "uatoken",
                "messageType",
            ];
            let items: Vec<String> = (0..rng.len(3, 20))
                .map(|_| format!("{}:{}", quoted(rng.pick(&keys)), value(rng, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

/// Makes a plausible JSON value for one field.
pub type Maker<C> = fn(&mut Rng, &C) -> String;

/// A JSON object with fields from `fields`: each is a name and a maker of plausible values.
/// A field is left out, given its plausible value, or given any value (type confusion);
/// now and then a field is repeated, a stranger is added, or the object is left unclosed.
pub fn object<C>(rng: &mut Rng, ctx: &C, fields: &[(&str, Maker<C>)]) -> String {
    let mut items = Vec::new();
    for (name, plausible) in fields {
        let copies = if rng.one_in(20) { 2 } else { 1 };
        for _ in 0..copies {
            match rng.below(8) {
                0 | 1 => {}
                2 => items.push(format!("{}:{}", quoted(name), value(rng, 1))),
                _ => items.push(format!("{}:{}", quoted(name), plausible(rng, ctx))),
            }
        }
    }
    if rng.one_in(6) {
        items.push(format!("{}:{}", string(rng), value(rng, 1)));
    }
    if rng.one_in(4) {
        let n = items.len();
        if n > 1 {
            let i = rng.below(n);
            items.swap(0, i);
        }
    }
    let sep = if rng.one_in(10) { " ,\n " } else { "," };
    let mut text = format!("{{{}}}", items.join(sep));
    match rng.below(40) {
        0 => {
            text.pop();
        }
        1 => text.push_str(" x"),
        2 => text.insert(0, ' '),
        _ => {}
    }
    text
}
