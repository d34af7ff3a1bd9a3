//! Resident memory and CPU time of processes, from `/proc`.

use std::time::Instant;

/// Linux reports CPU times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// User + system CPU time in ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>` (`self` for this process); `None` if the process is gone.
pub(crate) fn sample(pid: &str) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        rss_kib,
        cpu_ticks: utime + stime,
    })
}

/// Watches a set of processes (and this one) between two points in time.
pub(crate) struct Watch {
    pids: Vec<String>,
    started: Instant,
    servers: Vec<Option<Sample>>,
    own: Option<Sample>,
}

/// What a watch saw.
pub(crate) struct Usage {
    /// Resident memory of the watched servers, summed, at the start and now (KiB).
    pub server_rss_kib: (u64, u64),
    /// CPU cores the watched servers used on average.
    pub server_cores: f64,
    /// CPU-seconds the watched servers used, user and system.
    pub server_cpu_secs: f64,
    /// CPU cores this load generator used on average.
    pub own_cores: f64,
    /// Resident memory of this process now (KiB).
    pub own_rss_kib: u64,
}

impl Watch {
    pub(crate) fn start(pids: &[u32]) -> Watch {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        Watch {
            servers: pids.iter().map(|p| sample(p)).collect(),
            own: sample("self"),
            pids,
            started: Instant::now(),
        }
    }

    pub(crate) fn watching_servers(&self) -> bool {
        !self.pids.is_empty()
    }

    pub(crate) fn usage(&self) -> Usage {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let cores = |before: Option<Sample>, now: Option<Sample>| match (before, now) {
            (Some(b), Some(n)) => {
                n.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / TICKS_PER_SEC / secs
            }
            _ => 0.0,
        };
        let mut usage = Usage {
            server_rss_kib: (0, 0),
            server_cores: 0.0,
            server_cpu_secs: 0.0,
            own_cores: 0.0,
            own_rss_kib: 0,
        };
        for (pid, before) in self.pids.iter().zip(&self.servers) {
            let now = sample(pid);
            usage.server_rss_kib.0 += before.map_or(0, |s| s.rss_kib);
            usage.server_rss_kib.1 += now.map_or(0, |s| s.rss_kib);
            usage.server_cores += cores(*before, now);
            if let (Some(b), Some(n)) = (before, now) {
                usage.server_cpu_secs +=
                    n.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / TICKS_PER_SEC;
            }
        }
        let own = sample("self");
        usage.own_cores = cores(self.own, own);
        usage.own_rss_kib = own.map_or(0, |s| s.rss_kib);
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample("self").expect("/proc/self");
        assert!(s.rss_kib > 0);
        assert!(sample(&u32::MAX.to_string()).is_none());
    }
}
