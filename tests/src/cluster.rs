//! Starting and stopping the server processes of one test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Which deployment a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// ns-as, ns-msg-monitor, ns-ua-ws and ns-ua-udp on MongoDB and RabbitMQ.
    Distributed,
    /// ns-standalone on a data directory.
    Embedded,
}

/// Knobs a test may turn.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of ns-ua-ws instances (distributed mode).
    pub ws_instances: usize,
    /// Extra arguments for ns-as (or ns-standalone).
    pub as_args: Vec<String>,
    /// Extra arguments for ns-ua-udp (or ns-standalone).
    pub udp_args: Vec<String>,
    /// MongoDB URL override (distributed mode).
    pub mongo_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ws_instances: 1,
            as_args: Vec::new(),
            udp_args: Vec::new(),
            mongo_url: None,
        }
    }
}

pub fn mongo_url() -> String {
    std::env::var("NS_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

pub fn amqp_url() -> String {
    std::env::var("NS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Builds the binaries of `packages` (once per test run each) and returns the directory
/// they are in.
fn bin_dir(packages: &'static [&'static str]) -> PathBuf {
    static BUILT: Mutex<Vec<&'static [&'static str]>> = Mutex::new(Vec::new());
    {
        // Held while building: cargo would serialize concurrent builds anyway.
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if !built.contains(&packages) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let mut command = Command::new(cargo);
            command
                .current_dir(&workspace)
                .args(["build", "--quiet", "--bins"]);
            for p in packages {
                command.args(["-p", p]);
            }
            let status = command
                .status()
                .expect("running cargo build for the binaries");
            assert!(status.success(), "building {packages:?} failed");
            built.push(packages);
        }
    }
    // This test binary is target/<profile>/deps/<name>; the other binaries are one up.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .to_path_buf()
}

/// The load generator, built like the servers.
pub fn bench_bin() -> PathBuf {
    bin_dir(&["ns-bench"]).join("ns-bench")
}

const DISTRIBUTED_BINS: &[&str] = &["ns-as", "ns-msg-monitor", "ns-ua-ws", "ns-ua-udp"];
const EMBEDDED_BINS: &[&str] = &["ns-standalone"];

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// One server process; killed when dropped.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, args: Vec<String>, env: Vec<(String, String)>) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            args,
            env,
            child: None,
        };
        p.start();
        p
    }

    /// Starts (again) with the same arguments.
    pub fn start(&mut self) {
        let log = std::env::var("NS_TEST_LOG").is_ok();
        let packages = if self.name == "ns-standalone" {
            EMBEDDED_BINS
        } else {
            DISTRIBUTED_BINS
        };
        let child = Command::new(bin_dir(packages).join(&self.name))
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("NS_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
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
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
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

/// The processes of one test and where they listen.
pub struct Cluster {
    pub backend: Backend,
    pub procs: Vec<Proc>,
    /// `http://127.0.0.1:PORT` of each ns-ua-ws (the WebSocket is at `ws://` on the same port).
    pub ws: Vec<String>,
    pub as_url: String,
    pub udp_url: String,
    pub monitor_url: Option<String>,
    pub secret: String,
    /// Data directory of the embedded mode.
    pub data_dir: Option<tempfile::TempDir>,
}

impl Cluster {
    pub async fn start(backend: Backend) -> Cluster {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Cluster {
        let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple());
        let cluster = match backend {
            Backend::Distributed => Self::distributed(options, secret),
            Backend::Embedded => Self::embedded(options, secret),
        };
        cluster.wait_healthy().await;
        cluster
    }

    fn distributed(options: Options, secret: String) -> Cluster {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let as_port = free_port();
        let env = vec![
            ("NS_SECRET".to_owned(), secret.clone()),
            (
                "NS_MONGO_URL".to_owned(),
                options.mongo_url.clone().unwrap_or_else(mongo_url),
            ),
            ("NS_MONGO_DB".to_owned(), format!("t{}", &unique[..16])),
            ("NS_AMQP_URL".to_owned(), amqp_url()),
            ("NS_AMQP_PREFIX".to_owned(), format!("t{}.", &unique[..16])),
            (
                "NS_NOTIFY_BASE_URL".to_owned(),
                format!("http://127.0.0.1:{as_port}"),
            ),
        ];
        let listen = |port: u16| vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        let mut procs = Vec::new();

        let monitor_port = free_port();
        let mut args = listen(monitor_port);
        // Sweep often so the tests of lost routes don't wait long.
        args.extend(["--sweep-interval-secs", "1", "--sweep-min-age-secs", "2"].map(String::from));
        procs.push(Proc::spawn("ns-msg-monitor", args, env.clone()));

        let mut args = listen(as_port);
        args.extend(options.as_args.iter().cloned());
        procs.push(Proc::spawn("ns-as", args, env.clone()));

        let mut ws = Vec::new();
        for i in 0..options.ws_instances.max(1) {
            let port = free_port();
            let mut args = listen(port);
            args.extend(["--server-id".to_owned(), format!("ws{i}-{}", &unique[..8])]);
            procs.push(Proc::spawn("ns-ua-ws", args, env.clone()));
            ws.push(format!("http://127.0.0.1:{port}"));
        }

        let udp_port = free_port();
        let mut args = listen(udp_port);
        args.extend(options.udp_args.iter().cloned());
        procs.push(Proc::spawn("ns-ua-udp", args, env));

        Cluster {
            backend: Backend::Distributed,
            procs,
            ws,
            as_url: format!("http://127.0.0.1:{as_port}"),
            udp_url: format!("http://127.0.0.1:{udp_port}"),
            monitor_url: Some(format!("http://127.0.0.1:{monitor_port}")),
            secret,
            data_dir: None,
        }
    }

    fn embedded(options: Options, secret: String) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let (ws_port, as_port, udp_port, monitor_port) =
            (free_port(), free_port(), free_port(), free_port());
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--ws-listen".into(),
            format!("127.0.0.1:{ws_port}"),
            "--as-listen".into(),
            format!("127.0.0.1:{as_port}"),
            "--udp-listen".into(),
            format!("127.0.0.1:{udp_port}"),
            "--monitor-listen".into(),
            format!("127.0.0.1:{monitor_port}"),
            "--notify-base-url".into(),
            format!("http://127.0.0.1:{as_port}"),
        ];
        args.extend(options.as_args.iter().cloned());
        args.extend(options.udp_args.iter().cloned());
        let env = vec![("NS_SECRET".to_owned(), secret.clone())];
        let procs = vec![Proc::spawn("ns-standalone", args, env)];
        Cluster {
            backend: Backend::Embedded,
            procs,
            ws: vec![format!("http://127.0.0.1:{ws_port}")],
            as_url: format!("http://127.0.0.1:{as_port}"),
            udp_url: format!("http://127.0.0.1:{udp_port}"),
            monitor_url: Some(format!("http://127.0.0.1:{monitor_port}")),
            secret,
            data_dir: Some(dir),
        }
    }

    /// Every HTTP port of the cluster.
    pub fn http_ports(&self) -> Vec<String> {
        let mut urls = self.ws.clone();
        urls.push(self.as_url.clone());
        urls.push(self.udp_url.clone());
        urls.extend(self.monitor_url.clone());
        urls
    }

    /// Waits until every port answers `/health` with 200.
    pub async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        for url in self.http_ports() {
            crate::eventually(&format!("{url}/health"), Duration::from_secs(60), || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let r = client.get(format!("{url}/health")).send().await.ok()?;
                    (r.status() == 200).then_some(())
                }
            })
            .await;
        }
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The WebSocket URL of instance `i`.
    pub fn ws_url(&self, i: usize) -> String {
        self.ws[i].replacen("http://", "ws://", 1) + "/"
    }

    /// A new uatoken from instance 0.
    pub async fn token(&self) -> String {
        reqwest::get(format!("{}/token", self.ws[0]))
            .await
            .expect("GET /token")
            .text()
            .await
            .expect("token body")
    }

    /// POSTs a notify body (JSON text) to `url`; returns status and JSON body.
    pub async fn notify(&self, url: &str, body: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST notify");
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}
