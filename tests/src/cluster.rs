//! The server of one test: every service started with its `run(...)` in this process on
//! port-0 listeners, except the roles a test wants as real processes of their binaries.
//!
//! In the distributed mode each service gets its own MongoDB and RabbitMQ connections, as
//! separate processes would, in a database and under a queue prefix of its own; both are
//! removed when the cluster is dropped. The one-process mode runs `ns-standalone`'s library
//! on a temporary data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::messages::{NEW_MESSAGES, UDP_WAKEUPS};
use ns_broker::Broker;
use ns_broker_amqp::AmqpBroker;
use ns_runtime::metrics::Registry;
use ns_runtime::Clock;
use ns_store::Store;
use ns_store_mongo::MongoStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::Proc;
use crate::tls::ServerTls;

/// Which deployment a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// ns-as, ns-msg-monitor, ns-ua-ws and ns-ua-udp on MongoDB and RabbitMQ.
    Distributed,
    /// ns-standalone on a data directory.
    Embedded,
}

/// A part of the server a test may run as a process of its binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// ns-as.
    Notify,
    /// ns-msg-monitor.
    Monitor,
    /// The n-th ns-ua-ws.
    FrontEnd(usize),
    /// ns-ua-udp.
    Wakeup,
    /// The whole one-process server.
    Standalone,
}

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Options {
    /// Number of ns-ua-ws instances (distributed mode).
    pub ws_instances: usize,
    pub notify: ns_as::Settings,
    /// Of the monitor; the harness sets its sweep's interval and minimum age in the
    /// distributed mode.
    pub monitor: ns_msg_monitor::Settings,
    /// Of every front-end; its `server_id` is the harness's.
    pub front_end: ns_ua_ws::Settings,
    pub wakeup: ns_ua_udp::Settings,
    /// Of every HTTP port, in-process or not.
    pub http: ns_http::HttpLimits,
    /// MongoDB URL override (distributed mode).
    pub mongo_url: Option<String>,
    /// RabbitMQ URL override (distributed mode).
    pub amqp_url: Option<String>,
    /// The time the in-process services go by.
    pub clock: Clock,
    /// Roles run as child processes of these binaries instead of in this process.
    pub processes: Vec<(Role, PathBuf)>,
    /// TLS on every port, in-process or not: the URLs are then `https://` (and `wss://`).
    pub tls: Option<ServerTls>,
    /// A file the processes' standard error is appended to (else it is dropped, unless
    /// `NS_TEST_LOG` is set).
    pub process_log: Option<PathBuf>,
    /// The processes' `RUST_LOG` (else `NS_TEST_RUST_LOG`, else `warn`).
    pub log_filter: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ws_instances: 1,
            notify: ns_as::Settings::default(),
            monitor: ns_msg_monitor::Settings::default(),
            front_end: ns_ua_ws::Settings::default(),
            wakeup: ns_ua_udp::Settings::default(),
            http: ns_http::HttpLimits::default(),
            mongo_url: None,
            amqp_url: None,
            clock: Clock::system(),
            processes: Vec::new(),
            tls: None,
            process_log: None,
            log_filter: None,
        }
    }
}

impl Options {
    /// The in-process services' TLS.
    fn tls(&self) -> Option<ns_runtime::tls::Tls> {
        self.tls.as_ref().map(ServerTls::load)
    }

    /// The environment of a process: its TLS, if any.
    fn tls_env(&self) -> Vec<(String, String)> {
        self.tls.iter().flat_map(ServerTls::env).collect()
    }

    fn binary(&self, role: Role) -> Option<PathBuf> {
        self.processes
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, path)| path.clone())
    }
}

/// The HTTP client of a cluster's ports. It keeps no idle connection: one would hold a
/// place of a listener's connection limit, and outlive a restart of the process it went to.
fn client(options: &Options) -> reqwest::Client {
    let builder = match &options.tls {
        Some(tls) => tls.http_client_builder(),
        None => reqwest::Client::builder(),
    };
    builder
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

impl Options {
    /// An in-process service's `run` within the limits and TLS of every port.
    fn serve<F: std::future::Future>(
        &self,
        run: F,
    ) -> impl std::future::Future<Output = F::Output> {
        ns_http::with_tls(self.tls(), ns_http::with_limits(self.http.clone(), run))
    }
}

/// `limits` as the environment of a process.
fn http_env(limits: &ns_http::HttpLimits) -> impl Iterator<Item = (String, String)> {
    [
        (
            "NS_HTTP_HEADER_TIMEOUT_SECS",
            limits.http_header_timeout_secs.to_string(),
        ),
        (
            "NS_HTTP_BODY_TIMEOUT_SECS",
            limits.http_body_timeout_secs.to_string(),
        ),
        (
            "NS_HTTP_IDLE_TIMEOUT_SECS",
            limits.http_idle_timeout_secs.to_string(),
        ),
        (
            "NS_HTTP_MAX_CONNECTIONS",
            limits.http_max_connections.to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into_iter()
}

pub fn mongo_url() -> String {
    std::env::var("NS_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

pub fn amqp_url() -> String {
    std::env::var("NS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A listening socket on a port of the kernel's choosing.
fn listener() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    listener
}

/// The base URL of `listener`'s port: `https://` when `tls`.
fn url_of(listener: &std::net::TcpListener, tls: bool) -> String {
    let addr: SocketAddr = listener.local_addr().expect("a bound listener");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn tokio_listener(listener: std::net::TcpListener) -> tokio::net::TcpListener {
    tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
}

/// The database and queue names of a distributed cluster, removed at the end.
#[derive(Clone)]
struct Namespace {
    mongo_url: String,
    amqp_url: String,
    db: String,
    prefix: String,
}

/// The server of one test.
pub struct Cluster {
    pub backend: Backend,
    /// `http://127.0.0.1:PORT` of each ns-ua-ws (the WebSocket is at `ws://` on the same
    /// port); `https://` and `wss://` with [`Options::tls`].
    pub ws: Vec<String>,
    pub as_url: String,
    pub udp_url: String,
    pub monitor_url: String,
    pub secret: String,
    /// An HTTP client of the ports (trusting the test's CA with [`Options::tls`]).
    pub client: reqwest::Client,
    /// The TLS of every port, if any.
    pub tls: Option<ServerTls>,
    process_log: Option<PathBuf>,
    log_filter: Option<String>,
    procs: Vec<(Role, Proc)>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    namespace: Option<Namespace>,
    /// Data directory of the one-process mode.
    pub data_dir: Option<tempfile::TempDir>,
}

impl Cluster {
    pub async fn start(backend: Backend) -> Cluster {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Cluster {
        let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple());
        let cluster = match backend {
            Backend::Distributed => Self::distributed(options, secret).await,
            Backend::Embedded => Self::embedded(options, secret).await,
        };
        cluster.wait_healthy().await;
        cluster
    }

    async fn distributed(options: Options, secret: String) -> Cluster {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let namespace = Namespace {
            mongo_url: options.mongo_url.clone().unwrap_or_else(mongo_url),
            amqp_url: options.amqp_url.clone().unwrap_or_else(amqp_url),
            db: format!("t{}", &unique[..16]),
            prefix: format!("t{}.", &unique[..16]),
        };
        let (notify, monitor, wakeup) = (listener(), listener(), listener());
        let front_ends: Vec<_> = (0..options.ws_instances.max(1))
            .map(|_| listener())
            .collect();
        let https = options.tls.is_some();
        let notify_base_url = url_of(&notify, https);
        let mut cluster = Cluster {
            backend: Backend::Distributed,
            ws: front_ends.iter().map(|l| url_of(l, https)).collect(),
            as_url: notify_base_url.clone(),
            udp_url: url_of(&wakeup, https),
            monitor_url: url_of(&monitor, https),
            secret: secret.clone(),
            client: client(&options),
            tls: options.tls.clone(),
            process_log: options.process_log.clone(),
            log_filter: options.log_filter.clone(),
            procs: Vec::new(),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            namespace: Some(namespace.clone()),
            data_dir: None,
        };
        let env = |extra: &[(&str, String)]| -> Vec<(String, String)> {
            let mut env = vec![
                ("NS_SECRET", secret.clone()),
                ("NS_MONGO_URL", namespace.mongo_url.clone()),
                ("NS_MONGO_DB", namespace.db.clone()),
                ("NS_AMQP_URL", namespace.amqp_url.clone()),
                ("NS_AMQP_PREFIX", namespace.prefix.clone()),
                ("NS_NOTIFY_BASE_URL", notify_base_url.clone()),
            ];
            env.extend(extra.iter().cloned());
            env.into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain(http_env(&options.http))
                .chain(options.tls_env())
                .collect()
        };
        // Waited for, as the binaries do: a server started by the test may still be coming up.
        let connect = || async {
            let store =
                crate::eventually("MongoDB at NS_TEST_MONGO_URL", CONNECT_DEADLINE, || async {
                    MongoStore::connect(&namespace.mongo_url, &namespace.db)
                        .await
                        .ok()
                })
                .await;
            let broker =
                crate::eventually("RabbitMQ at NS_TEST_AMQP_URL", CONNECT_DEADLINE, || async {
                    AmqpBroker::connect(&namespace.amqp_url, &namespace.prefix)
                        .await
                        .ok()
                })
                .await;
            // Timed, as the binaries' are.
            let registry = Registry::default();
            let store: Arc<dyn Store> = ns_store::Timed::wrap(Arc::new(store), &registry);
            let broker: Arc<dyn Broker> = ns_broker::Timed::wrap(Arc::new(broker), &registry);
            (store, broker, registry)
        };
        let clock = options.clock.clone();

        // Sweep often, so that the tests of lost routes don't wait long.
        let (sweep_interval, sweep_min_age) = (1, 2);
        match options.binary(Role::Monitor) {
            Some(binary) => {
                let env = env(&[
                    ("NS_SWEEP_INTERVAL_SECS", sweep_interval.to_string()),
                    ("NS_SWEEP_MIN_AGE_SECS", sweep_min_age.to_string()),
                    (
                        "NS_MAX_PENDING_PER_UA",
                        options.monitor.max_pending_per_ua.to_string(),
                    ),
                ]);
                cluster.spawn(Role::Monitor, &binary, env, vec![monitor]);
            }
            None => {
                let (store, broker, registry) = connect().await;
                let settings = ns_msg_monitor::Settings {
                    sweep_interval_secs: sweep_interval,
                    sweep_min_age_secs: sweep_min_age,
                    ..options.monitor.clone()
                };
                let deps = ns_msg_monitor::Deps {
                    store,
                    broker,
                    registry,
                    clock: clock.clone(),
                };
                let run = ns_msg_monitor::run(
                    settings,
                    tokio_listener(monitor),
                    deps,
                    cluster.shutdown.clone(),
                );
                cluster.in_process(options.serve(run));
            }
        }

        match options.binary(Role::Notify) {
            Some(binary) => {
                let mut extra = vec![
                    ("NS_RATE_LIMIT", options.notify.rate_limit.to_string()),
                    ("NS_RATE_BURST", options.notify.rate_burst.to_string()),
                ];
                extra.push((
                    "NS_MAX_MESSAGE_BYTES",
                    options.notify.max_message_bytes.to_string(),
                ));
                extra.push((
                    "NS_MAX_PENDING_PER_APP",
                    options.notify.max_pending_per_app.to_string(),
                ));
                cluster.spawn(Role::Notify, &binary, env(&extra), vec![notify]);
            }
            None => {
                let (store, broker, registry) = connect().await;
                let deps = ns_as::Deps {
                    store,
                    broker,
                    registry,
                    clock: clock.clone(),
                    secret: common::crypto::Secret::new(secret.as_bytes()),
                    public_base_url: notify_base_url.clone(),
                };
                let run = ns_as::run(
                    options.notify.clone(),
                    tokio_listener(notify),
                    deps,
                    cluster.shutdown.clone(),
                );
                cluster.in_process(options.serve(run));
            }
        }

        for (i, listener) in front_ends.into_iter().enumerate() {
            let server_id = format!("ws{i}-{}", &unique[..8]);
            match options.binary(Role::FrontEnd(i)) {
                Some(binary) => {
                    let env = env(&[
                        ("NS_SERVER_ID", server_id),
                        ("NS_MAX_PENDING", options.front_end.max_pending.to_string()),
                    ]);
                    cluster.spawn(Role::FrontEnd(i), &binary, env, vec![listener]);
                }
                None => {
                    let (store, broker, registry) = connect().await;
                    let settings = ns_ua_ws::Settings {
                        server_id: Some(server_id),
                        ..options.front_end.clone()
                    };
                    let deps = ns_ua_ws::Deps {
                        store,
                        broker,
                        registry,
                        clock: clock.clone(),
                        secret: common::crypto::Secret::new(secret.as_bytes()),
                        notify_base_url: notify_base_url.clone(),
                    };
                    let run = ns_ua_ws::run(
                        settings,
                        tokio_listener(listener),
                        deps,
                        cluster.shutdown.clone(),
                    );
                    cluster.in_process(options.serve(run));
                }
            }
        }

        match options.binary(Role::Wakeup) {
            Some(binary) => {
                let extra = [
                    (
                        "NS_WAKEUP_INTERVAL_SECS",
                        options.wakeup.wakeup_interval_secs.to_string(),
                    ),
                    (
                        "NS_COALESCE_WINDOW_SECS",
                        options.wakeup.coalesce_window_secs.to_string(),
                    ),
                ];
                cluster.spawn(Role::Wakeup, &binary, env(&extra), vec![wakeup]);
            }
            None => {
                let (store, broker, registry) = connect().await;
                let deps = ns_ua_udp::Deps {
                    store,
                    broker,
                    registry,
                    clock,
                    secret: common::crypto::Secret::new(secret.as_bytes()),
                    notify_base_url: notify_base_url.clone(),
                };
                let run = ns_ua_udp::run(
                    options.wakeup.clone(),
                    tokio_listener(wakeup),
                    deps,
                    cluster.shutdown.clone(),
                );
                cluster.in_process(options.serve(run));
            }
        }
        cluster
    }

    async fn embedded(options: Options, secret: String) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let (ws, notify, pull, monitor) = (listener(), listener(), listener(), listener());
        let https = options.tls.is_some();
        let notify_base_url = url_of(&notify, https);
        let mut cluster = Cluster {
            backend: Backend::Embedded,
            ws: vec![url_of(&ws, https)],
            as_url: notify_base_url.clone(),
            udp_url: url_of(&pull, https),
            monitor_url: url_of(&monitor, https),
            secret: secret.clone(),
            client: client(&options),
            tls: options.tls.clone(),
            process_log: options.process_log.clone(),
            log_filter: options.log_filter.clone(),
            procs: Vec::new(),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            namespace: None,
            data_dir: None,
        };
        match options.binary(Role::Standalone) {
            Some(binary) => {
                let env = vec![
                    ("NS_SECRET".to_owned(), secret),
                    ("NS_DATA_DIR".to_owned(), dir.path().display().to_string()),
                    ("NS_NOTIFY_BASE_URL".to_owned(), notify_base_url),
                    (
                        "NS_MAX_PENDING".to_owned(),
                        options.front_end.max_pending.to_string(),
                    ),
                    (
                        "NS_MAX_PENDING_PER_APP".to_owned(),
                        options.notify.max_pending_per_app.to_string(),
                    ),
                    (
                        "NS_MAX_PENDING_PER_UA".to_owned(),
                        options.monitor.max_pending_per_ua.to_string(),
                    ),
                ];
                let env = env
                    .into_iter()
                    .chain(http_env(&options.http))
                    .chain(options.tls_env())
                    .collect();
                cluster.spawn(
                    Role::Standalone,
                    &binary,
                    env,
                    vec![ws, notify, pull, monitor],
                );
            }
            None => {
                let mut settings =
                    ns_standalone::Settings::new(dir.path().to_owned(), notify_base_url);
                settings.secret.secret = Some(secret);
                settings.notify = options.notify;
                settings.monitor = options.monitor;
                settings.front_end = options.front_end;
                settings.wakeup = options.wakeup;
                settings.http = options.http.clone();
                if let Some(tls) = &options.tls {
                    settings.tls = tls.config();
                }
                let listeners = ns_standalone::Listeners {
                    ws: tokio_listener(ws),
                    notify: tokio_listener(notify),
                    pull: tokio_listener(pull),
                    monitor: tokio_listener(monitor),
                };
                let run = ns_standalone::run(
                    settings,
                    listeners,
                    options.clock,
                    cluster.shutdown.clone(),
                );
                cluster.in_process(run);
            }
        }
        cluster.data_dir = Some(dir);
        cluster
    }

    fn spawn(
        &mut self,
        role: Role,
        binary: &std::path::Path,
        env: Vec<(String, String)>,
        listeners: Vec<std::net::TcpListener>,
    ) {
        let mut proc = Proc::new(binary, env, listeners);
        proc.log = self.process_log.clone();
        proc.log_filter = self.log_filter.clone();
        proc.start();
        self.procs.push((role, proc));
    }

    fn in_process(
        &mut self,
        run: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = run.await {
                panic!("a service failed: {e:#}");
            }
        }));
    }

    /// Every HTTP port of the cluster.
    pub fn http_ports(&self) -> Vec<String> {
        let mut urls = self.ws.clone();
        urls.push(self.as_url.clone());
        urls.push(self.udp_url.clone());
        urls.push(self.monitor_url.clone());
        urls
    }

    /// Waits until every port answers `/health` with 200.
    pub async fn wait_healthy(&self) {
        let client = self.client.clone();
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

    /// The process running `role`.
    pub fn proc(&mut self, role: Role) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("{role:?} does not run as a process"))
    }

    /// The WebSocket URL of instance `i` (`wss://` with TLS).
    pub fn ws_url(&self, i: usize) -> String {
        let (http, ws) = match self.tls {
            Some(_) => ("https://", "wss://"),
            None => ("http://", "ws://"),
        };
        self.ws[i].replacen(http, ws, 1) + "/"
    }

    /// Waits until no front-end holds a WebSocket any more: every connection that was
    /// closed has been released, its UA recorded as offline.
    pub async fn wait_no_connections(&self) {
        let client = self.client.clone();
        for url in &self.ws {
            crate::eventually("every connection released", Duration::from_secs(30), || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let text = client
                        .get(format!("{url}/metrics"))
                        .send()
                        .await
                        .ok()?
                        .text()
                        .await
                        .ok()?;
                    let open: i64 = text
                        .lines()
                        .filter(|l| l.starts_with("ns_ws_connections{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
                        .sum();
                    (open == 0 && text.contains("ns_ws_connections{")).then_some(())
                }
            })
            .await;
        }
    }

    /// A new uatoken from instance 0.
    pub async fn token(&self) -> String {
        self.client
            .get(format!("{}/token", self.ws[0]))
            .send()
            .await
            .expect("GET /token")
            .text()
            .await
            .expect("token body")
    }

    /// POSTs a notify body (JSON text) to `url`; returns status and JSON body.
    pub async fn notify(&self, url: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
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

/// How long the services wait for MongoDB and RabbitMQ to answer.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// How long the services get to stop before what they leave is removed.
const STOP_GRACE: Duration = Duration::from_secs(20);

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for (_, proc) in &mut self.procs {
            proc.kill();
        }
        // The services stop on the runtime's other worker; a queue deleted while one still
        // runs would be declared again by it.
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while self.tasks.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(namespace) = self.namespace.take() {
            // A runtime of its own: this one may be the one being dropped.
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(remove(namespace));
            });
            let _ = cleanup.join();
        }
    }
}

/// Removes a distributed cluster's database, durable queues and events exchange: best
/// effort, as a leftover only takes some space.
async fn remove(namespace: Namespace) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    use lapin::{Connection, ConnectionProperties};
    if let Ok(connection) =
        Connection::connect(&namespace.amqp_url, ConnectionProperties::default()).await
    {
        if let Ok(channel) = connection.create_channel().await {
            for queue in [NEW_MESSAGES, UDP_WAKEUPS] {
                let name = format!("{}{queue}", namespace.prefix);
                let _ = channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let exchange = format!("{}{}", namespace.prefix, ns_broker_amqp::EVENTS_EXCHANGE);
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "test done".into()).await;
        }
        let _ = connection.close(200, "test done".into()).await;
    }
    let Ok(mut options) = mongodb::options::ClientOptions::parse(&namespace.mongo_url).await else {
        return;
    };
    // A server the test stopped must not hold the test up for the driver's 30 s default.
    options.server_selection_timeout = Some(Duration::from_secs(2));
    if let Ok(client) = mongodb::Client::with_options(options) {
        let _ = client.database(&namespace.db).drop().await;
    }
}
