//! Logging set-up: `RUST_LOG` filter, text or JSON lines.

use tracing_subscriber::filter::Directive;
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// lapin logs every returned message with its payload at WARN; payloads are never logged.
const QUIET: &str = "lapin::returned_messages=error";

pub fn init(config: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if let Ok(directive) = QUIET.parse::<Directive>() {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}
