//! `ns`, the command-line client, as the CLI suite (`tests/cli.rs`) runs it: the binary
//! cargo built, started as a child process whose standard output is read line by line as
//! it comes, every wait bounded, and the process killed when the test lets go of it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How long a test waits for a line, or for `ns` to exit.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The environment variables `ns` reads: a test's command line says everything itself.
const NS_ENV: &[&str] = &[
    "NS_SERVER",
    "NS_PULL_SERVER",
    "NS_CA_CERT",
    "NS_JSON",
    "NS_UATOKEN",
    "NS_VAPID_KEY",
    "NS_VAPID_SUBJECT",
];

/// The `ns` binary of this test's target directory and profile, built first unless it is
/// newer than every source of the workspace (a package's binaries are built for its own
/// tests only, as [`crate::faults::binaries`] explains).
pub fn ns_binary() -> &'static Path {
    static NS: OnceLock<PathBuf> = OnceLock::new();
    NS.get_or_init(|| {
        let mut paths = crate::faults::built(&["ns"], &["ns-cli"]);
        paths.pop().expect("the path of ns")
    })
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(ns_binary());
    command.args(args).kill_on_drop(true);
    for name in NS_ENV {
        command.env_remove(name);
    }
    command
}

/// What a finished `ns` printed, and how it exited.
#[derive(Debug)]
pub struct Done {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Done {
    /// The exit code; panics if a signal ended the process.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("ns ended by a signal: {self:?}"))
    }

    /// Standard output, trimmed; panics unless `ns` exited 0.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code(), 0, "ns failed: {self:?}");
        self.stdout.trim()
    }

    /// The lines of standard output; panics unless `ns` exited 0.
    pub fn lines(&self) -> Vec<&str> {
        self.ok().lines().filter(|l| !l.is_empty()).collect()
    }

    /// Standard output as one JSON object; panics unless `ns` exited 0.
    pub fn json(&self) -> serde_json::Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|_| panic!("not one JSON object: {text}"))
    }

    /// Checks a failure: exit `code`, nothing on standard output, and one line on
    /// standard error, `ns: ...`, that contains `expected`.
    pub fn assert_failed(&self, code: i32, expected: &str) {
        assert_eq!(self.code(), code, "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            line.starts_with("ns: ") && !line.contains('\n'),
            "not one `ns: ...` line: {:?}",
            self.stderr
        );
        assert!(line.contains(expected), "{expected:?} not in {line:?}");
    }
}

/// Runs `ns` with `args` to its end, within [`DEADLINE`].
pub async fn ns(args: &[&str]) -> Done {
    let mut command = command(args);
    command.stdin(Stdio::null());
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("ns {args:?} did not exit within {DEADLINE:?}"))
        .expect("running ns");
    Done {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("UTF-8 on standard output"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 on standard error"),
    }
}

/// An `ns` that runs on (`listen`), read a line at a time; killed when dropped.
pub struct Running {
    args: Vec<String>,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: JoinHandle<()>,
}

impl Running {
    pub fn spawn(args: &[&str]) -> Running {
        let mut child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ns");
        let stdout = BufReader::new(child.stdout.take().expect("a piped stdout")).lines();
        let mut pipe = child.stderr.take().expect("a piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        // Read as it comes, so that a chatty `ns` never blocks on a full pipe.
        let sink = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock().expect("the stderr buffer").push_str(&text);
            }
        });
        Running {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child,
            stdout,
            stderr,
            stderr_reader,
        }
    }

    /// What it wrote on standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("the stderr buffer").clone()
    }

    /// The next line of standard output; panics at its end or after [`DEADLINE`].
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(DEADLINE, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => panic!(
                "ns {:?}: standard output ended; standard error: {}",
                self.args,
                self.stderr()
            ),
            Err(_) => panic!(
                "ns {:?}: no line within {DEADLINE:?}; standard error: {}",
                self.args,
                self.stderr()
            ),
        }
    }

    /// The next line, as JSON.
    pub async fn json(&mut self) -> serde_json::Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    /// Waits for the exit (the end of `--count`); checks that nothing more was printed.
    pub async fn exit(mut self) -> Done {
        let rest = tokio::time::timeout(DEADLINE, async {
            let mut rest = String::new();
            while let Ok(Some(line)) = self.stdout.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        })
        .await
        .unwrap_or_else(|_| panic!("ns {:?} did not exit within {DEADLINE:?}", self.args));
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("ns {:?} did not exit within {DEADLINE:?}", self.args))
            .expect("waiting for ns");
        let _ = tokio::time::timeout(DEADLINE, &mut self.stderr_reader).await;
        Done {
            status,
            stdout: rest,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.stderr_reader.abort();
    }
}
