//! Configuration groups shared by the binaries (`clap` derive, each option also read from an
//! `NS_...` environment variable), and the checks that turn them into ready values. The
//! groups of the backends sit with the code that connects to them.

use clap::Args;
use std::fmt;

use common::crypto::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// The cluster's shared secret: tokens and notify URLs are only valid under it.
#[derive(Args, Clone)]
pub struct SecretConfig {
    /// Shared secret of the cluster (every instance must have the same one).
    #[arg(long = "secret", env = "NS_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

impl fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretConfig(..)")
    }
}

impl SecretConfig {
    /// The secret, which the distributed services require.
    pub fn require(&self) -> Result<Secret, ConfigError> {
        match self.secret.as_deref() {
            Some(s) if s.len() >= 16 => Ok(Secret::new(s.as_bytes())),
            Some(_) => Err(ConfigError::Invalid(
                "--secret / NS_SECRET must be at least 16 characters".into(),
            )),
            None => Err(ConfigError::Invalid(
                "--secret / NS_SECRET is required (the same value on every instance)".into(),
            )),
        }
    }
}

/// How the services build the notify URL they hand out and send.
#[derive(Args, Clone, Debug)]
pub struct PublicUrlConfig {
    /// Public base URL of ns-as, as application servers reach it.
    #[arg(
        long,
        env = "NS_NOTIFY_BASE_URL",
        default_value = "http://localhost:8081"
    )]
    pub notify_base_url: String,
}

impl PublicUrlConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        let u = &self.notify_base_url;
        if u.starts_with("http://") || u.starts_with("https://") {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "--notify-base-url must start with http:// or https:// (got {u:?})"
            )))
        }
    }
}

/// Log output.
#[derive(Args, Clone, Debug)]
pub struct LogConfig {
    /// Log as JSON lines (for containers) instead of text. Filter with RUST_LOG.
    #[arg(long, env = "NS_LOG_JSON")]
    pub log_json: bool,
}

/// Collects every configuration problem so the binary can report them all at once.
///
/// [`crate::cli::parse`] starts it with the configuration file's problems and, under
/// `--print-config`, with the effective settings to print once every check has run.
#[derive(Default)]
pub struct Problems {
    problems: Vec<String>,
    print: Option<String>,
}

impl Problems {
    /// Problems found in the configuration file, and what `--print-config` prints.
    pub(crate) fn new(problems: Vec<String>, print: Option<String>) -> Self {
        Problems { problems, print }
    }

    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(ConfigError::Invalid(msg)) => {
                self.problems.push(msg);
                None
            }
        }
    }

    /// Adds problems found elsewhere.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = String>) {
        self.problems.extend(problems);
    }

    /// The problems so far.
    pub fn list(&self) -> &[String] {
        &self.problems
    }

    /// What `--print-config` is to print.
    #[cfg(test)]
    pub(crate) fn print_text(&self) -> Option<&str> {
        self.print.as_deref()
    }

    /// Exits with `EX_USAGE` (64) after printing every problem, if there were any. Under
    /// `--print-config`, first prints the effective settings to stdout, and exits 0 when
    /// there is no problem: the binary does not start.
    #[allow(
        clippy::print_stdout,
        reason = "--print-config writes the settings to stdout"
    )]
    pub fn exit_if_any(self) {
        if let Some(text) = &self.print {
            print!("{text}");
        }
        if !self.problems.is_empty() {
            for p in &self.problems {
                eprintln!("configuration error: {p}");
            }
            std::process::exit(64);
        }
        if self.print.is_some() {
            std::process::exit(0);
        }
    }
}
