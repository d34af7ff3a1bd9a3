//! The whole server under faults, as real processes of its binaries: a steady stream of
//! notifications to UAs that are live on a WebSocket, asleep (woken by UDP, pulling), or
//! offline until the end, while parts of the server are killed with SIGKILL and started
//! again. Whatever the faults, a notification answered `200` reaches every UA registered
//! for it before it expires, an ack the server confirmed is final, and nothing is delivered
//! after its expiry. Refused requests and repeated deliveries before an ack are allowed.
//!
//! The distributed test runs on a RabbitMQ node and a MongoDB-wire server of its own, which
//! it restarts and kills; both need `scripts/services.sh start` to have installed them.
//! `--nocapture` shows the counts of each run.

// The counts and the timeline of the faults are this suite's report.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use ns_tests::faults::{
    self, asleep, live, progress, register, settle, Counts, Database, Ledger, Rabbit, Stream,
    StreamSpec, UaSpec,
};
use ns_tests::{eventually, Backend, Cluster, Options, Role};
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// One test at a time: each loads a 2-core machine on its own, and the check of expiry
/// allows a UA only a second to read what it was sent.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the cluster gets to work again after a fault.
const RECOVERY: Duration = Duration::from_secs(90);

/// How long the UAs get, once the stream stopped, to receive what they are owed.
const DRAIN: Duration = Duration::from_secs(60);

/// Notifications per second: SecantusDB stores a few hundred writes a second.
const RATE: u32 = 20;

/// Notifications answered `200`, deliveries, and deliveries by pull that show the cluster
/// works again.
const STEPS: (usize, usize, usize) = (30, 30, 5);

/// The UAs of a scenario, and the apps they registered for.
struct Scenario {
    /// Live on a WebSocket throughout, on the front-end of that index.
    live: &'static [(&'static str, usize)],
    /// Registered with a UDP interface and no WebSocket.
    asleep: &'static [(&'static str, usize)],
    /// Registered, then away until the stream is over.
    offline: &'static [(&'static str, usize)],
    /// The UAs registered for each app.
    apps: &'static [&'static [&'static str]],
}

/// Two front-ends: every kind of UA on both, and apps that mix kinds.
const DISTRIBUTED: Scenario = Scenario {
    live: &[("live-0", 0), ("live-1", 0), ("live-2", 1)],
    asleep: &[("asleep-0", 1), ("asleep-1", 0)],
    offline: &[("offline-0", 0), ("offline-1", 1)],
    apps: &[
        &["live-0", "live-2"],
        &["live-1", "offline-0", "asleep-0"],
        &["offline-1", "live-0"],
        &["asleep-1", "live-2", "offline-0"],
    ],
};

/// The same UAs on the one front-end of the one-process server.
const STANDALONE: Scenario = Scenario {
    live: &[("live-0", 0), ("live-1", 0), ("live-2", 0)],
    asleep: &[("asleep-0", 0), ("asleep-1", 0)],
    offline: &[("offline-0", 0), ("offline-1", 0)],
    apps: DISTRIBUTED.apps,
};

/// How a UA of a scenario behaves.
#[derive(Clone, Copy)]
enum Kind {
    Live,
    Asleep,
    Offline,
}

/// A scenario's UAs set up on a cluster, the stream under way.
struct Run {
    ledger: Arc<Ledger>,
    urls: Vec<String>,
    live: Vec<String>,
    offline: Vec<UaSpec>,
    stream: Stream,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Run {
    /// Registers every UA and its apps, lets the live and asleep ones run, and starts the
    /// stream once every live UA is connected.
    async fn start(c: &Cluster, scenario: &Scenario) -> Run {
        let apps: Vec<Vec<String>> = scenario
            .apps
            .iter()
            .map(|uas| uas.iter().map(|ua| (*ua).to_owned()).collect())
            .collect();
        let ledger = Ledger::new(apps.clone());
        let watokens: Vec<String> = (0..apps.len()).map(|i| format!("faults-app-{i}")).collect();
        let mut urls: Vec<Option<String>> = vec![None; apps.len()];
        let spec = |name: &str, instance: usize, token: String| UaSpec {
            name: name.to_owned(),
            token,
            ws_url: c.ws_url(instance),
        };
        // Each UA registered (the asleep ones with a UDP interface) for its apps.
        let mut live_uas = Vec::new();
        let mut asleep_uas = Vec::new();
        let mut offline = Vec::new();
        let kinds = [
            (scenario.live, Kind::Live),
            (scenario.asleep, Kind::Asleep),
            (scenario.offline, Kind::Offline),
        ];
        for (uas, kind) in kinds {
            for &(name, instance) in uas {
                let ua = spec(name, instance, c.token().await);
                let socket = match kind {
                    Kind::Asleep => {
                        Some(UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket"))
                    }
                    Kind::Live | Kind::Offline => None,
                };
                let port = socket
                    .as_ref()
                    .map(|s| s.local_addr().expect("its address").port());
                let mine: Vec<usize> = (0..apps.len())
                    .filter(|&i| apps[i].contains(&ua.name))
                    .collect();
                let wanted: Vec<String> = mine.iter().map(|&i| watokens[i].clone()).collect();
                for (&i, url) in mine.iter().zip(register(&ua, port, &wanted).await) {
                    let known = urls[i].get_or_insert_with(|| url.clone());
                    assert_eq!(*known, url, "one notify URL per app");
                }
                match (kind, socket) {
                    (Kind::Asleep, Some(socket)) => asleep_uas.push((ua, socket)),
                    (Kind::Live, _) => live_uas.push(ua),
                    _ => offline.push(ua),
                }
            }
        }
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.expect("every app has a UA"))
            .collect();
        // Every set-up connection released: the asleep and offline UAs are offline.
        c.wait_no_connections().await;

        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let live_names: Vec<String> = live_uas.iter().map(|ua| ua.name.clone()).collect();
        for ua in live_uas {
            tasks.spawn(live(ua, ledger.clone(), stop.clone()));
        }
        for (ua, socket) in asleep_uas {
            tasks.spawn(asleep(
                ua,
                socket,
                c.udp_url.clone(),
                ledger.clone(),
                stop.clone(),
            ));
        }
        let run = Run {
            stream: Stream::start(
                StreamSpec {
                    urls: urls.clone(),
                    per_second: RATE,
                    short_every: 4,
                    short_ttl: 3,
                    long_ttl: 600,
                },
                ledger.clone(),
            ),
            ledger,
            urls,
            live: live_names,
            offline,
            stop,
            tasks,
        };
        run.recovered("the stream to be delivered").await;
        run
    }

    /// Says (and notes in the ledger) that a fault happens now.
    fn fault(&self, what: &str) {
        println!("fault: {what}");
        self.ledger.note(what);
    }

    /// Waits until every live UA is connected again and notifications flow again.
    async fn recovered(&self, what: &str) {
        eventually(
            &format!("every live UA connected ({what})"),
            RECOVERY,
            || async { self.ledger.all_connected(&self.live).then_some(()) },
        )
        .await;
        progress(&self.ledger, what, STEPS, RECOVERY).await;
    }

    /// Stops the stream, brings the offline UAs back, waits until every UA got what it is
    /// owed (or the drain's deadline passes), and stops them all; the counts.
    async fn finish(mut self) -> Counts {
        self.stream.stop().await;
        for ua in self.offline.drain(..) {
            self.tasks
                .spawn(live(ua, self.ledger.clone(), self.stop.clone()));
        }
        let counts = settle(&self.ledger, DRAIN).await;
        self.stop.cancel();
        while let Some(task) = self.tasks.join_next().await {
            task.expect("a UA's task");
        }
        for (ua, id, message_id) in counts.lost.iter().take(10) {
            let app = self.ledger.app_of(id).expect("a notification sent");
            let status = reqwest::get(format!("{}/{id}", self.urls[app])).await.ok();
            let status = match status {
                Some(r) => r.text().await.unwrap_or_default(),
                None => "no answer".into(),
            };
            println!("lost: {ua} never got {id} ({message_id}); its status: {status}");
        }
        counts
    }
}

/// The checks of every run: nothing lost, no ack undone, nothing delivered expired, and
/// enough answered and delivered that the run means something.
fn check(name: &str, counts: &Counts) {
    println!("{name}:\n{counts}");
    let timeline: Vec<String> = counts
        .notes
        .iter()
        .map(|(at, what)| format!("+{at:.1} s {what}"))
        .collect();
    println!("{name}: faults at {}", timeline.join(", "));
    for what in counts.redelivered_after_ack.iter().take(10) {
        println!("{name}: {what}");
    }
    for what in counts.delivered_after_expiry.iter().take(10) {
        println!("{name}: {what}");
    }
    assert!(counts.answered >= 100, "too few answered: {counts}");
    assert!(counts.delivered >= 200, "too few delivered: {counts}");
    assert!(
        counts.lost.is_empty(),
        "notifications answered 200 never delivered: {:?}",
        &counts.lost[..counts.lost.len().min(20)]
    );
    assert!(
        counts.redelivered_after_ack.is_empty(),
        "delivered again after the ack was stored: {:?}",
        counts.redelivered_after_ack
    );
    assert!(
        counts.delivered_after_expiry.is_empty(),
        "delivered after expiry: {:?}",
        counts.delivered_after_expiry
    );
}

/// The distributed server, every role a process of its binary on two front-ends, goes
/// through one fault of each kind in turn under the stream: SIGKILL of ns-as, of
/// ns-msg-monitor, of an ns-ua-ws (its UAs connect again and register again, as real ones
/// would), of ns-ua-udp, and of the database, each started again, then a restart of the
/// broker. After each, the test waits until every live UA is connected and notifications
/// flow again; at the end the offline UAs come back and drain what is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_cluster_through_every_fault() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let binaries = faults::binaries();
    let started = std::time::Instant::now();
    let mut rabbit = Rabbit::start().await;
    let mut db = Database::start().await;
    let options = Options {
        ws_instances: 2,
        mongo_url: Some(db.url()),
        amqp_url: Some(rabbit.url()),
        wakeup: ns_ua_udp::Settings {
            wakeup_interval_secs: 1,
            ..Default::default()
        },
        processes: vec![
            (Role::Notify, binaries.notify.clone()),
            (Role::Monitor, binaries.monitor.clone()),
            (Role::FrontEnd(0), binaries.front_end.clone()),
            (Role::FrontEnd(1), binaries.front_end.clone()),
            (Role::Wakeup, binaries.wakeup.clone()),
        ],
        ..Default::default()
    };
    // Dropped before the servers it runs on.
    let mut c = Cluster::start_with(Backend::Distributed, options).await;
    let run = Run::start(&c, &DISTRIBUTED).await;

    for role in [Role::Notify, Role::Monitor, Role::FrontEnd(0), Role::Wakeup] {
        run.fault(&format!("SIGKILL {role:?}"));
        c.proc(role).kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.proc(role).start();
        c.wait_healthy().await;
        run.recovered(&format!("recovery from SIGKILL of {role:?}"))
            .await;
    }

    run.fault("SIGKILL the database");
    db.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.start_again().await;
    c.wait_healthy().await;
    run.recovered("recovery from SIGKILL of the database").await;

    run.fault("broker restart");
    rabbit.restart().await;
    c.wait_healthy().await;
    run.recovered("recovery from the broker's restart").await;

    let counts = run.finish().await;
    println!("distributed: {:.0} s", started.elapsed().as_secs_f64());
    check("distributed", &counts);
}

/// ns-standalone as a process of its binary, SIGKILLed 3 to 5 times at random moments under
/// the stream and started again on the same data directory (`NS_FAULTS_SEED` replays a
/// run's moments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_through_kill_9() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let binaries = faults::binaries();
    let started = std::time::Instant::now();
    let seed = std::env::var("NS_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("standalone: NS_FAULTS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let options = Options {
        processes: vec![(Role::Standalone, binaries.standalone.clone())],
        ..Default::default()
    };
    let mut c = Cluster::start_with(Backend::Embedded, options).await;
    let run = Run::start(&c, &STANDALONE).await;

    let kills = rng.gen_range(3..=5);
    for k in 1..=kills {
        let after = Duration::from_millis(rng.gen_range(500..4000));
        tokio::time::sleep(after).await;
        run.fault(&format!("SIGKILL {k}/{kills} of ns-standalone"));
        c.proc(Role::Standalone).kill();
        c.proc(Role::Standalone).start();
        c.wait_healthy().await;
        run.recovered(&format!("recovery from SIGKILL {k}")).await;
    }

    let counts = run.finish().await;
    println!("standalone: {:.0} s", started.elapsed().as_secs_f64());
    check("standalone", &counts);
}
