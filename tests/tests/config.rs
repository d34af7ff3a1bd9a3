//! Configuration files, as the real binaries read them: the example files of `contrib/` load,
//! the systemd unit's command line is accepted, a flag beats its `NS_*` variable which beats
//! the file which beats the default, every problem of a file is reported at once with exit
//! 64, `--print-config` hides secrets, and a server started from a file listens where the
//! file says.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ns_tests::eventually;
use ns_tests::faults::{binaries, free_port};
use tokio::process::Command;

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(name)
}

/// Runs `binary` with `args` and `env`, and with no `NS_*` variable of the test's own
/// environment; returns its output.
async fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars() {
        if name.starts_with("NS_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the binary answers within 30 s")
        .expect("running the binary")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--print-config` with the binary's other arguments: the effective settings, exit 0.
async fn print_config(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = args.to_vec();
    all.push("--print-config");
    let output = run(binary, &all, env).await;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    stdout
}

#[tokio::test]
async fn the_example_files_load() {
    let standalone = contrib("ns-standalone.toml");
    let printed = print_config(
        &binaries().standalone,
        &["--config", standalone.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(
        printed.contains("\nws-listen = \"0.0.0.0:8080\"  # configuration file\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\nmax-pending-per-ua = 1000  # configuration file\n"),
        "{printed}"
    );

    // ns-ua-ws's example leaves the secret to NS_SECRET, as it advises.
    let front_end = contrib("ns-ua-ws.toml");
    let printed = print_config(
        &binaries().front_end,
        &["--config", front_end.to_str().unwrap()],
        &[("NS_SECRET", "a-secret-of-at-least-16")],
    )
    .await;
    assert!(
        printed.contains("\nserver-id = \"ws1\"  # configuration file\n"),
        "{printed}"
    );
    assert!(
        printed.contains("secret = \"<redacted>\"  # NS_SECRET"),
        "{printed}"
    );
    assert!(!printed.contains("a-secret-of-at-least-16"), "{printed}");
}

/// The unit's `ExecStart=`, its continuation lines joined, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    line.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn the_systemd_unit_starts_the_server_with_its_options() {
    let unit = std::fs::read_to_string(contrib("systemd/ns-standalone.service")).expect("the unit");
    let words = exec_start(&unit);
    assert_eq!(words[0], "/usr/local/bin/ns-standalone", "{words:?}");
    let state = tempfile::tempdir().expect("a directory");
    let example = contrib("ns-standalone.toml");
    // The installed paths, here: the binary under test, the example file, a state directory.
    let args: Vec<String> = words[1..]
        .iter()
        .map(|w| match w.as_str() {
            "/etc/ns-standalone/ns-standalone.toml" => example.display().to_string(),
            "/var/lib/ns-standalone" => state.path().display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = print_config(&binaries().standalone, &args, &[]).await;
    let data_dir = format!(
        "\ndata-dir = \"{}\"  # command line\n",
        state.path().display()
    );
    assert!(printed.contains(&data_dir), "{printed}");
    for option in [
        "StateDirectory=ns-standalone",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(option), "{option} not in the unit");
    }
}

#[tokio::test]
async fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("ns.toml");
    std::fs::write(
        &file,
        "rate-limit = 5\nmax-pull = 6\nws_listen = \"127.0.0.1:9000\"\n",
    )
    .expect("writing");
    let printed = print_config(
        &binaries().standalone,
        &["--config", file.to_str().unwrap(), "--max-pull", "8"],
        &[("NS_MAX_PULL", "7"), ("NS_RATE_BURST", "9")],
    )
    .await;
    for line in [
        "\nmax-pull = 8  # command line\n",
        "\nrate-burst = 9  # NS_RATE_BURST\n",
        "\nrate-limit = 5  # configuration file\n",
        "\nws-listen = \"127.0.0.1:9000\"  # configuration file\n",
        "\nmax-pending = 10000  # default\n",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }

    // The file named by NS_CONFIG when there is no --config.
    let printed = print_config(
        &binaries().standalone,
        &[],
        &[("NS_CONFIG", file.to_str().unwrap())],
    )
    .await;
    assert!(
        printed.contains("\nmax-pull = 6  # configuration file\n"),
        "{printed}"
    );
}

#[tokio::test]
async fn every_problem_is_reported_at_once_with_exit_64() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("ns.toml");
    std::fs::write(
        &file,
        "ws-lisen = \"0.0.0.0:8080\"\nrate-limit = \"fast\"\nmax-pull = -1\nsecret = \"short\"\n\
         [mongo]\nurl = \"mongodb://h\"\n",
    )
    .expect("writing");
    for binary in [&binaries().standalone, &binaries().wakeup] {
        let output = run(binary, &["--config", file.to_str().unwrap()], &[]).await;
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        for needle in [
            "unknown key `ws-lisen`",
            "unknown key `mongo`",
            "`max-pull`",
        ] {
            assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
        }
        assert!(
            !stderr.contains("short\""),
            "the secret is not echoed: {stderr}"
        );
    }
    // ns-standalone has a rate limit; ns-ua-udp has none, so that key is unknown to it.
    let output = run(
        &binaries().standalone,
        &["--config", file.to_str().unwrap()],
        &[],
    )
    .await;
    let (_, stderr) = text(&output);
    assert!(
        stderr.contains("`rate-limit` must be an integer"),
        "{stderr}"
    );
    assert!(stderr.contains("at least 16"), "{stderr}");

    let missing = dir.path().join("missing.toml");
    let output = run(
        &binaries().notify,
        &["--config", missing.to_str().unwrap()],
        &[],
    )
    .await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("reading the configuration file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn print_config_hides_secrets_and_passwords() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("ns.toml");
    std::fs::write(
        &file,
        "secret = \"0123456789abcdef-hidden\"\n\
         amqp-url = \"amqp://push:hunter2@broker:5672/%2f\"\n\
         mongo-url = \"mongodb://push:swordfish@db:27017/push\"\n",
    )
    .expect("writing");
    let printed = print_config(
        &binaries().notify,
        &["--config", file.to_str().unwrap()],
        &[("NS_NOTIFY_BASE_URL", "https://push.example.com")],
    )
    .await;
    for secret in ["0123456789abcdef-hidden", "hunter2", "swordfish"] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    assert!(
        printed.contains("amqp://push:<redacted>@broker:5672/%2f"),
        "{printed}"
    );
    assert!(printed.contains("secret = \"<redacted>\""), "{printed}");
}

#[tokio::test]
async fn a_server_started_from_a_file_listens_where_it_says() {
    let dir = tempfile::tempdir().expect("a directory");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let file = dir.path().join("ns.toml");
    std::fs::write(
        &file,
        format!(
            "ws-listen = \"127.0.0.1:{}\"\nas-listen = \"127.0.0.1:{}\"\n\
             udp-listen = \"127.0.0.1:{}\"\nmonitor-listen = \"127.0.0.1:{}\"\n\
             data-dir = \"{}\"\n",
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            dir.path().join("data").display()
        ),
    )
    .expect("writing");
    let mut child = Command::new(&binaries().standalone)
        .args(["--config", file.to_str().unwrap()])
        .env_remove("NS_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .expect("starting ns-standalone");
    let client = reqwest::Client::new();
    for port in &ports {
        let url = format!("http://127.0.0.1:{port}/health");
        eventually(&url, Duration::from_secs(30), || async {
            let answer = client.get(&url).send().await.ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
    }
    assert!(
        dir.path().join("data").is_dir(),
        "the file's data-dir is used"
    );
    child.kill().await.expect("stopping ns-standalone");
}
