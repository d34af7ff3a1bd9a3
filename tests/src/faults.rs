//! What the whole-cluster fault suite (`tests/faults.rs`) runs on: the server binaries built
//! by cargo, a RabbitMQ node and a MongoDB-wire server of its own that it can stop, kill and
//! start again, UAs that behave as real ones through every fault (reconnecting, pulling when
//! woken, acking what they get), a steady stream of notifications, and the ledger that
//! compares what was answered `200` with what the UAs got.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a server of the suite gets to start answering.
const SERVER_START: Duration = Duration::from_secs(90);

/// How long a UA waits for a connection and its `OK`, or an HTTP answer, before it tries
/// again: generous, as a restarting server keeps new connections waiting.
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);

/// Wall-clock time in seconds, as the notifications' `timestamp` and `ttl` count it.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

/// A port nobody listens on now, for a server that can only be told a port number.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn port_accepts(port: u16) -> bool {
    StdTcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .is_ok()
}

/// Waits until something accepts connections on `port` (or no longer does, with `open`
/// false); panics with `what` after `deadline`.
pub async fn wait_port(what: &str, port: u16, open: bool, deadline: Duration) {
    crate::eventually(what, deadline, || async move {
        let accepts = tokio::task::spawn_blocking(move || port_accepts(port))
            .await
            .unwrap_or(false);
        (accepts == open).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The binaries

/// The server binaries the suite runs, as processes.
pub struct Binaries {
    pub notify: PathBuf,
    pub monitor: PathBuf,
    pub front_end: PathBuf,
    pub wakeup: PathBuf,
    pub standalone: PathBuf,
}

/// The five server binaries of this test's target directory and profile. A package's
/// binaries are built for its own tests only, so `cargo test -p ns-tests` alone would run
/// stale ones, or none: unless each is newer than every source of the workspace (as after
/// `cargo test --workspace`, which builds them all first), cargo builds them.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let names = [
            "ns-as",
            "ns-msg-monitor",
            "ns-ua-ws",
            "ns-ua-udp",
            "ns-standalone",
        ];
        let paths: [PathBuf; 5] = built(&names, &names).try_into().expect("a path per binary");
        let [notify, monitor, front_end, wakeup, standalone] = paths;
        Binaries {
            notify,
            monitor,
            front_end,
            wakeup,
            standalone,
        }
    })
}

/// The paths of `binaries` in this test's target directory and profile, after building
/// `packages` (theirs) unless every one of them is newer than every source of the
/// workspace.
pub(crate) fn built(binaries: &[&str], packages: &[&str]) -> Vec<PathBuf> {
    // target/<profile>/deps/<this test>
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let paths: Vec<PathBuf> = binaries.iter().map(|name| profile_dir.join(name)).collect();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let sources = newest_source(workspace);
    let fresh = paths.iter().all(|path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|built| built >= sources)
    });
    if !fresh {
        build(profile_dir, packages);
    }
    paths
}

/// Builds `packages`' binaries into `profile_dir` (`target/<profile>`).
fn build(profile_dir: &Path, packages: &[&str]) {
    let target_dir = profile_dir.parent().expect("a target directory");
    let profile = match profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory")
    {
        "debug" => "dev",
        other => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--bins", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build of the server binaries failed"
    );
}

/// The time of the newest `.rs` or `Cargo.*` file of the workspace outside `target` and
/// this crate.
fn newest_source(workspace: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut dirs = vec![workspace.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                let skip = name.starts_with('.')
                    || (dir == workspace && (name == "target" || name == "tests"));
                if !skip {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") || name.starts_with("Cargo.") {
                if let Ok(modified) = meta.modified() {
                    newest = newest.max(modified);
                }
            }
        }
    }
    newest
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

/// A RabbitMQ node of this test alone, on ports and in a directory of its own, so that
/// stopping it disturbs no other test; stopped when dropped.
pub struct Rabbit {
    pub node: String,
    pub port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

/// A RabbitMQ script: the real one rather than Debian's wrapper, which switches to the
/// `rabbitmq` user (and so to its own environment and files).
fn rabbit_script(name: &str) -> PathBuf {
    let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if direct.exists() {
        direct
    } else {
        PathBuf::from(name)
    }
}

impl Rabbit {
    /// Starts a new node and waits until it accepts AMQP connections.
    pub async fn start() -> Rabbit {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let dir = tempfile::tempdir().expect("a directory for RabbitMQ");
        // Nothing from /etc/rabbitmq: no plugin of the machine's node (and its ports), no
        // node name or port of its environment file.
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("writing a file");
        std::fs::write(dir.path().join("rabbitmq.conf"), "").expect("writing a file");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("writing a file");
        let mut rabbit = Rabbit {
            node: format!("ns-faults-{}@localhost", &unique[..12]),
            port: free_port(),
            dist_port: free_port(),
            dir,
            running: false,
        };
        rabbit.start_again().await;
        rabbit
    }

    /// `amqp://` URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, script: &str) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new(rabbit_script(script));
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Starts the node again on the same ports and data (durable queues survive) and waits
    /// until it accepts AMQP connections.
    pub async fn start_again(&mut self) {
        let status = self
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("running rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        self.running = true;
        wait_port(
            &format!("RabbitMQ node {} on port {}", self.node, self.port),
            self.port,
            true,
            SERVER_START,
        )
        .await;
    }

    /// Stops the node and waits until its process has exited.
    pub async fn stop(&mut self) {
        let mut command = self.command("rabbitmqctl");
        command.args(["-n", &self.node, "shutdown"]);
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .expect("rabbitmqctl's thread")
            .expect("running rabbitmqctl");
        assert!(status.success(), "rabbitmqctl shutdown failed");
        self.running = false;
        wait_port("RabbitMQ to stop", self.port, false, SERVER_START).await;
    }

    /// A broker restart: stop, then start on the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("rabbitmqctl")
                .args(["-n", &self.node, "shutdown"])
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The MongoDB-wire server

/// A MongoDB-wire server (SecantusDB's `secantusd-py`) of this test alone, on a port and a
/// storage directory of its own; killed when dropped.
pub struct Database {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Database {
    /// Starts a new server and waits until it accepts connections.
    pub async fn start() -> Database {
        let mut db = Database {
            port: free_port(),
            dir: tempfile::tempdir().expect("a directory for the database"),
            child: None,
        };
        db.start_again().await;
        db
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and storage.
    pub async fn start_again(&mut self) {
        let program = std::env::var("NS_TEST_SECANTUSD").unwrap_or_else(|_| "secantusd-py".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("secantusd.log"))
            .expect("the database's log file");
        let child = Command::new(&program)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            // Each commit on disk before it is answered: a SIGKILL of the server then loses
            // nothing it acknowledged, as a crash of a journaling MongoDB.
            .arg("--sync-on-commit")
            .args(["--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {program} (scripts/services.sh start installs it): {e}")
            });
        self.child = Some(child);
        wait_port(
            &format!("the MongoDB-wire server on port {}", self.port),
            self.port,
            true,
            SERVER_START,
        )
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// The ledger

/// One notification the stream sent.
struct Sent {
    app: usize,
    expires: f64,
    message_id: Option<String>,
}

/// One (UA, message id) a UA got.
struct Got {
    first_at: f64,
    times: usize,
}

#[derive(Default)]
struct State {
    /// The recipients of each app, by UA name.
    apps: Vec<Vec<String>>,
    sent: BTreeMap<String, Sent>,
    answered: HashMap<String, String>,
    refused: BTreeMap<u16, usize>,
    failed: usize,
    got: HashMap<(String, String), Got>,
    got_by_ua: HashMap<String, usize>,
    pulled: usize,
    /// When each ack was confirmed stored.
    acked: HashMap<(String, String), f64>,
    redelivered_after_ack: Vec<String>,
    delivered_after_expiry: Vec<String>,
    ack_errors: usize,
    connected: HashMap<String, bool>,
    connections: usize,
    wakeups: usize,
    /// What happened when (faults), for the reports.
    notes: Vec<(f64, String)>,
    started: f64,
}

/// What was sent, answered, delivered and acked, and the checks on them.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
}

/// How a UA got notifications.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    WebSocket,
    Pull,
}

impl Ledger {
    /// A ledger of notifications to apps each received by the named UAs.
    pub fn new(apps: Vec<Vec<String>>) -> Arc<Ledger> {
        let ledger = Ledger::default();
        let mut s = ledger.state();
        s.apps = apps;
        s.started = now_secs();
        drop(s);
        Arc::new(ledger)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self, id: &str, app: usize, expires: f64) {
        self.state().sent.insert(
            id.to_owned(),
            Sent {
                app,
                expires,
                message_id: None,
            },
        );
    }

    fn answered(&self, id: &str, message_id: &str) {
        let mut s = self.state();
        s.answered.insert(message_id.to_owned(), id.to_owned());
        if let Some(sent) = s.sent.get_mut(id) {
            sent.message_id = Some(message_id.to_owned());
        }
    }

    fn refused(&self, status: u16) {
        *self.state().refused.entry(status).or_default() += 1;
    }

    fn failed(&self) {
        self.state().failed += 1;
    }

    /// A notification object a UA got: checks it against the acks and its expiry.
    fn got(&self, ua: &str, n: &Value, via: Via) {
        let at = now_secs();
        let Some(message_id) = n["messageId"].as_str() else {
            panic!("{ua} got a notification without a messageId: {n}");
        };
        let (Some(timestamp), Some(ttl)) = (n["timestamp"].as_f64(), n["ttl"].as_f64()) else {
            panic!("{ua} got a notification without its timestamp and ttl: {n}");
        };
        let key = (ua.to_owned(), message_id.to_owned());
        let mut s = self.state();
        if let Some(acked_at) = s.acked.get(&key) {
            let first_at = s.got.get(&key).map_or(f64::NAN, |g| g.first_at);
            let what = format!(
                "{ua} got {message_id} (id {}) at +{:.3} s, again at +{:.3} s after its ack \
                 was stored at +{:.3} s",
                n["id"],
                first_at - s.started,
                at - s.started,
                acked_at - s.started,
            );
            s.redelivered_after_ack.push(what);
        }
        // Whole seconds; the server's clock is this machine's.
        if at > timestamp + ttl + EXPIRY_SLACK_SECS {
            let what = format!(
                "{ua} got {message_id} (id {}, timestamp {timestamp}, ttl {ttl}) at {at:.3}, \
                 {:.3} s after it expired",
                n["id"],
                at - timestamp - ttl
            );
            s.delivered_after_expiry.push(what);
        }
        match s.got.get_mut(&key) {
            Some(got) => got.times += 1,
            None => {
                if via == Via::Pull {
                    s.pulled += 1;
                }
                s.got.insert(
                    key,
                    Got {
                        first_at: at,
                        times: 1,
                    },
                );
                *s.got_by_ua.entry(ua.to_owned()).or_default() += 1;
            }
        }
    }

    /// Acks the server confirmed it stored.
    fn acked(&self, ua: &str, ids: &[String]) {
        let at = now_secs();
        let mut s = self.state();
        for id in ids {
            s.acked.entry((ua.to_owned(), id.clone())).or_insert(at);
        }
    }

    /// Notes what happens now (a fault), for the reports.
    pub fn note(&self, what: &str) {
        let mut s = self.state();
        let at = now_secs() - s.started;
        s.notes.push((at, what.to_owned()));
    }

    fn ack_error(&self) {
        self.state().ack_errors += 1;
    }

    fn connected(&self, ua: &str, live: bool) {
        let mut s = self.state();
        s.connected.insert(ua.to_owned(), live);
        if live {
            s.connections += 1;
        }
    }

    fn woken(&self) {
        self.state().wakeups += 1;
    }

    /// Whether each of `uas` holds a registered connection now.
    pub fn all_connected(&self, uas: &[String]) -> bool {
        let s = self.state();
        uas.iter()
            .all(|ua| s.connected.get(ua).copied().unwrap_or(false))
    }

    /// The app the notification with AS id `id` went to.
    pub fn app_of(&self, id: &str) -> Option<usize> {
        self.state().sent.get(id).map(|sent| sent.app)
    }

    /// Notifications answered `200`, UAs' distinct deliveries, and deliveries by pull.
    pub fn progress(&self) -> (usize, usize, usize) {
        let s = self.state();
        (s.answered.len(), s.got.len(), s.pulled)
    }

    /// Each (UA, AS id, message id) answered `200`, not expired at `now`, that the UA
    /// registered for it has not got.
    pub fn missing(&self, now: f64) -> Vec<(String, String, String)> {
        let s = self.state();
        let mut missing = Vec::new();
        for (id, sent) in &s.sent {
            let Some(message_id) = &sent.message_id else {
                continue;
            };
            if sent.expires <= now {
                continue;
            }
            for ua in &s.apps[sent.app] {
                if !s.got.contains_key(&(ua.clone(), message_id.clone())) {
                    missing.push((ua.clone(), id.clone(), message_id.clone()));
                }
            }
        }
        missing
    }

    /// The counts at `now`.
    pub fn counts(&self, now: f64) -> Counts {
        let lost = self.missing(now);
        let s = self.state();
        let mut expired_undelivered = 0;
        for sent in s.sent.values() {
            let Some(message_id) = &sent.message_id else {
                continue;
            };
            if sent.expires <= now {
                expired_undelivered += s.apps[sent.app]
                    .iter()
                    .filter(|ua| !s.got.contains_key(&((*ua).clone(), message_id.clone())))
                    .count();
            }
        }
        Counts {
            sent: s.sent.len(),
            answered: s.answered.len(),
            refused: s.refused.clone(),
            failed: s.failed,
            delivered: s.got.len(),
            delivered_unanswered: s
                .got
                .keys()
                .filter(|(_, m)| !s.answered.contains_key(m))
                .count(),
            pulled: s.pulled,
            repeated: s.got.values().map(|g| g.times - 1).sum(),
            acked: s.acked.len(),
            ack_errors: s.ack_errors,
            expired_undelivered,
            wakeups: s.wakeups,
            connections: s.connections,
            by_ua: s.got_by_ua.clone().into_iter().collect(),
            lost,
            redelivered_after_ack: s.redelivered_after_ack.clone(),
            delivered_after_expiry: s.delivered_after_expiry.clone(),
            notes: s.notes.clone(),
        }
    }
}

/// Slack on the expiry check: the `timestamp` is in whole seconds, and a frame takes a
/// moment to be read.
const EXPIRY_SLACK_SECS: f64 = 1.0;

/// What a run counted.
pub struct Counts {
    pub sent: usize,
    /// Notifications answered `200`.
    pub answered: usize,
    /// Other answers, by status.
    pub refused: BTreeMap<u16, usize>,
    /// Requests with no answer (connection refused or reset, time-out).
    pub failed: usize,
    /// Distinct (UA, message id) deliveries.
    pub delivered: usize,
    /// Deliveries of notifications whose request was not answered `200`.
    pub delivered_unanswered: usize,
    /// Of those, by `POST /pull`.
    pub pulled: usize,
    /// Deliveries of a notification a UA had already got and not yet acked (allowed).
    pub repeated: usize,
    /// Acks whose storing the server confirmed.
    pub acked: usize,
    /// Acks the server answered with an error (allowed, retried).
    pub ack_errors: usize,
    /// (UA, notification) answered `200` that expired before reaching the UA (allowed).
    pub expired_undelivered: usize,
    pub wakeups: usize,
    /// Registered WebSocket connections of the UAs, reconnections included.
    pub connections: usize,
    pub by_ua: BTreeMap<String, usize>,
    /// (UA, AS id, message id) answered `200`, unexpired, never delivered.
    pub lost: Vec<(String, String, String)>,
    pub redelivered_after_ack: Vec<String>,
    pub delivered_after_expiry: Vec<String>,
    /// What happened when, in seconds since the ledger started.
    pub notes: Vec<(f64, String)>,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent {}, answered 200 {}, refused {:?}, no answer {}",
            self.sent, self.answered, self.refused, self.failed
        )?;
        writeln!(
            f,
            "delivered {} (of which by pull {}, of unanswered requests {}), repeated before ack {}, \
             acks stored {}, ack errors {}, expired before delivery {}",
            self.delivered,
            self.pulled,
            self.delivered_unanswered,
            self.repeated,
            self.acked,
            self.ack_errors,
            self.expired_undelivered
        )?;
        writeln!(
            f,
            "UA connections {}, wake-ups {}, delivered by UA {:?}",
            self.connections, self.wakeups, self.by_ua
        )?;
        write!(
            f,
            "LOST {}, REDELIVERED AFTER ACK {}, DELIVERED AFTER EXPIRY {}",
            self.lost.len(),
            self.redelivered_after_ack.len(),
            self.delivered_after_expiry.len()
        )
    }
}

// ---------------------------------------------------------------------------------------
// UAs

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A UA of the suite: a name for the ledger, its uatoken and its front-end.
#[derive(Clone)]
pub struct UaSpec {
    pub name: String,
    pub token: String,
    pub ws_url: String,
}

fn frame(command: &str, data: Value) -> Message {
    Message::Text(
        json!({ "command": command, "data": data })
            .to_string()
            .into(),
    )
}

/// Opens a WebSocket and registers the UA (with a UDP `interface` on 127.0.0.1 at
/// `udp_port` when given); `None` unless the answer is `OK` in time.
async fn connect_registered(ua: &UaSpec, udp_port: Option<u16>) -> Option<Socket> {
    let attempt = async {
        let mut request = ua.ws_url.as_str().into_client_request().ok()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "push-notification".parse().ok()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.ok()?;
        let mut data = json!({ "uatoken": ua.token });
        if let Some(port) = udp_port {
            data["interface"] = json!({ "ip": "127.0.0.1", "port": port });
        }
        ws.send(frame("register/ua", data)).await.ok()?;
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) if t.as_str() == "OK" => return Some(ws),
                Ok(Message::Text(_)) | Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(CLIENT_DEADLINE, attempt)
        .await
        .ok()
        .flatten()
}

/// Registers the UA (wakeable at `udp_port` when given) and each of `watokens`, then
/// closes; returns the notify URLs. Panics on any refusal: this is set-up, before faults.
pub async fn register(ua: &UaSpec, udp_port: Option<u16>, watokens: &[String]) -> Vec<String> {
    let mut ws = connect_registered(ua, udp_port)
        .await
        .unwrap_or_else(|| panic!("{} could not register", ua.name));
    let mut urls = Vec::new();
    for watoken in watokens {
        ws.send(frame(
            "register/wa",
            json!({ "uatoken": ua.token, "watoken": watoken }),
        ))
        .await
        .expect("sending register/wa");
        let url = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("{}: register/wa got {other:?}", ua.name),
            }
        };
        assert!(url.contains("/notify/"), "not a notify URL: {url}");
        urls.push(url);
    }
    let _ = ws.close(None).await;
    urls
}

/// A UA that keeps a WebSocket open until `stop`: whenever it is closed (a front-end
/// killed, a take-over, a refusal while the database is down), it connects again with the
/// same uatoken and registers again. It acks every notification it gets and follows each
/// ack with a `PING`: the server handles a connection's frames one after the other and
/// answers an ack it could not store with an error, so a `PONG` with no error before it
/// means the ack is stored, and only then does the ledger count it acked.
pub async fn live(ua: UaSpec, ledger: Arc<Ledger>, stop: CancellationToken) {
    loop {
        if let Some(ws) = tokio::select! {
            ws = connect_registered(&ua, None) => ws,
            () = stop.cancelled() => return,
        } {
            ledger.connected(&ua.name, true);
            let stopped = serve(ws, &ua, &ledger, &stop).await;
            ledger.connected(&ua.name, false);
            if stopped {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Serves one registered connection; true when it ended because of `stop`.
async fn serve(mut ws: Socket, ua: &UaSpec, ledger: &Ledger, stop: &CancellationToken) -> bool {
    // Each ack sent and not yet settled by its PONG, with whether an error came for it.
    let mut unsettled: VecDeque<(Vec<String>, bool)> = VecDeque::new();
    // Acks to send again: the server could not store them.
    let mut again: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let ids = tokio::select! {
            () = stop.cancelled() => {
                let _ = ws.close(None).await;
                return true;
            }
            _ = tick.tick() => {
                if again.is_empty() {
                    continue;
                }
                std::mem::take(&mut again)
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text == "PONG" {
                        if let Some((ids, failed)) = unsettled.pop_front() {
                            if failed {
                                again.extend(ids);
                            } else {
                                ledger.acked(&ua.name, &ids);
                            }
                        }
                        continue;
                    }
                    match serde_json::from_str::<Value>(text) {
                        Ok(Value::Array(notifications)) => {
                            for n in &notifications {
                                ledger.got(&ua.name, n, Via::WebSocket);
                            }
                            notifications
                                .iter()
                                .filter_map(|n| n["messageId"].as_str().map(str::to_owned))
                                .collect()
                        }
                        Ok(v) if v["error"].is_string() => {
                            ledger.ack_error();
                            if let Some((_, failed)) = unsettled.front_mut() {
                                *failed = true;
                            }
                            continue;
                        }
                        _ => continue,
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => continue,
            },
        };
        let sent = async {
            ws.send(frame("ack", json!({ "messageIds": ids }))).await?;
            ws.send(Message::Text("PING".into())).await
        };
        if sent.await.is_err() {
            return false;
        }
        unsettled.push_back((ids, false));
    }
}

/// A UA asleep: registered with a UDP `interface` and no WebSocket. It pulls when a
/// `NOTIFY` datagram wakes it, and every few seconds anyway (a wake-up may be lost with a
/// killed ns-ua-udp, and priority 3-4 ones wake no one), acking by `POST /ack` what it
/// pulled. Until `stop`.
pub async fn asleep(
    ua: UaSpec,
    socket: UdpSocket,
    udp_url: String,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(CLIENT_DEADLINE)
        .build()
        .expect("an HTTP client");
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    if buf[..n].starts_with(b"NOTIFY") {
                        ledger.woken();
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        pull_all(&client, &ua, &udp_url, &ledger).await;
    }
}

/// Pulls and acks until nothing is left or the server fails to answer.
async fn pull_all(client: &reqwest::Client, ua: &UaSpec, udp_url: &str, ledger: &Ledger) {
    const LIMIT: usize = 100;
    loop {
        let pulled = async {
            let r = client
                .post(format!("{udp_url}/pull"))
                .json(&json!({ "uatoken": ua.token, "limit": LIMIT }))
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            Some(v["messages"].as_array()?.clone())
        };
        let Some(messages) = pulled.await else {
            return;
        };
        if messages.is_empty() {
            return;
        }
        for n in &messages {
            ledger.got(&ua.name, n, Via::Pull);
        }
        let ids: Vec<String> = messages
            .iter()
            .filter_map(|n| n["messageId"].as_str().map(str::to_owned))
            .collect();
        let acked = client
            .post(format!("{udp_url}/ack"))
            .json(&json!({ "uatoken": ua.token, "messageIds": ids }))
            .send()
            .await;
        match acked {
            Ok(r) if r.status() == 200 => ledger.acked(&ua.name, &ids),
            _ => {
                ledger.ack_error();
                return;
            }
        }
        if messages.len() < LIMIT {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stream

/// Notifications sent at a steady rate until stopped.
pub struct Stream {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How the stream's notifications look.
#[derive(Clone)]
pub struct StreamSpec {
    /// The notify URL of each app, notifications going to them in turn.
    pub urls: Vec<String>,
    pub per_second: u32,
    /// Every `short_every`-th notification has a TTL of `short_ttl` seconds, the others
    /// `long_ttl`.
    pub short_every: u64,
    pub short_ttl: u64,
    pub long_ttl: u64,
}

impl Stream {
    /// Starts sending. Each notification has its own AS id (so none replaces another) and
    /// its `timestamp` (now, in whole seconds); nothing is sent again after a failure.
    pub fn start(spec: StreamSpec, ledger: Arc<Ledger>) -> Stream {
        let stop = CancellationToken::new();
        let task = tokio::spawn(send(spec, ledger, stop.clone()));
        Stream { stop, task }
    }

    /// Stops sending and waits for every request in flight to be answered or to fail.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the stream's task");
    }
}

async fn send(spec: StreamSpec, ledger: Arc<Ledger>, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(CLIENT_DEADLINE)
        .build()
        .expect("an HTTP client");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        while in_flight.try_join_next().is_some() {}
        let app = (n % spec.urls.len() as u64) as usize;
        let ttl = if n % spec.short_every == spec.short_every - 1 {
            spec.short_ttl
        } else {
            spec.long_ttl
        };
        let timestamp = now_secs().floor() as u64;
        let id = format!("n{n}");
        let body = json!({
            "id": id,
            "message": format!("notification {n}"),
            "ttl": ttl,
            "timestamp": timestamp,
            "priority": 1,
        });
        ledger.sent(&id, app, (timestamp + ttl) as f64);
        let (client, ledger, url) = (client.clone(), ledger.clone(), spec.urls[app].clone());
        in_flight.spawn(async move {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap_or_default();
                    match v["messageId"].as_str() {
                        Some(message_id) => ledger.answered(&id, message_id),
                        None => ledger.failed(),
                    }
                }
                Ok(r) => ledger.refused(r.status().as_u16()),
                Err(_) => ledger.failed(),
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Waits until the stream and the UAs moved on by `answered` notifications answered `200`
/// and `delivered` new deliveries (`pulled` of them by pull) since the call: the cluster
/// works again after a fault. Panics with `what` after `deadline`.
pub async fn progress(
    ledger: &Ledger,
    what: &str,
    (answered, delivered, pulled): (usize, usize, usize),
    deadline: Duration,
) {
    let (a0, d0, p0) = ledger.progress();
    crate::eventually(what, deadline, || async {
        let (a, d, p) = ledger.progress();
        (a >= a0 + answered && d >= d0 + delivered && p >= p0 + pulled).then_some(())
    })
    .await;
}

/// Waits until nothing answered `200` and unexpired is missing at any UA, or `deadline`
/// passes; the counts then.
pub async fn settle(ledger: &Ledger, deadline: Duration) -> Counts {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end && !ledger.missing(now_secs()).is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ledger.counts(now_secs())
}
