//! One server binary run as a child process, on listening sockets this process holds and
//! hands over (systemd's `LISTEN_FDS`): its ports stay the same across restarts, and no port
//! is ever picked by binding and letting go.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

/// The first handed-over descriptor, by the protocol.
const FIRST_FD: i32 = 3;

/// A server process; killed when dropped.
pub struct Proc {
    program: PathBuf,
    env: Vec<(String, String)>,
    listeners: Vec<TcpListener>,
    child: Option<Child>,
    /// A file its standard error is appended to; else it is dropped (inherited with
    /// `NS_TEST_LOG`).
    pub log: Option<PathBuf>,
    /// Its `RUST_LOG`; else `NS_TEST_RUST_LOG`, else `warn`.
    pub log_filter: Option<String>,
}

impl Proc {
    /// Starts `program` with `env` on `listeners`, handed over in this order.
    pub fn spawn(program: &Path, env: Vec<(String, String)>, listeners: Vec<TcpListener>) -> Proc {
        let mut p = Proc::new(program, env, listeners);
        p.start();
        p
    }

    /// `program` with `env` on `listeners`, not started yet.
    pub fn new(program: &Path, env: Vec<(String, String)>, listeners: Vec<TcpListener>) -> Proc {
        Proc {
            program: program.to_owned(),
            env,
            listeners,
            child: None,
            log: None,
            log_filter: None,
        }
    }

    /// Starts (again) with the same environment and sockets.
    pub fn start(&mut self) {
        let mappings = self
            .listeners
            .iter()
            .zip(FIRST_FD..)
            .map(|(listener, child_fd)| FdMapping {
                parent_fd: listener
                    .as_fd()
                    .try_clone_to_owned()
                    .expect("duplicating a listening socket"),
                child_fd,
            })
            .collect();
        let stderr = match (&self.log, std::env::var("NS_TEST_LOG").is_ok()) {
            (Some(path), _) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display())),
            (None, true) => Stdio::inherit(),
            (None, false) => Stdio::null(),
        };
        let mut command = Command::new(&self.program);
        command
            .envs(self.env.iter().cloned())
            .env("LISTEN_FDS", self.listeners.len().to_string())
            .env(
                "RUST_LOG",
                self.log_filter.clone().unwrap_or_else(|| {
                    std::env::var("NS_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into())
                }),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .fd_mappings(mappings)
            .expect("distinct descriptors");
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() > end {
                let _ = child.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
