//! `ns`: parses the command line, runs it, and turns its outcome into the exit status that
//! `ns --help` documents.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use ns_cli::args::Cli;
use ns_cli::error::one_line;
use ns_cli::Exit;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are asked for, and printed as clap lays them out.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // `ns` alone: the overview, as a reminder of the commands.
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(Exit::Usage.code());
        }
        Err(e) => return fail(&usage_line(&e.render().to_string()), Exit::Usage),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("starting the runtime: {e}"), Exit::Software),
    };
    match runtime.block_on(ns_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => fail(&one_line(&e), e.exit()),
    }
}

fn fail(message: &str, exit: Exit) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "ns: {message}");
    ExitCode::from(exit.code())
}

/// A command-line error of clap on one line, as every other failure: its paragraphs
/// joined, the usage and the pointer to `--help` left for `--help` to give.
fn usage_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered.lines().map(str::trim) {
        if part.is_empty() || part.starts_with("Usage:") || part.starts_with("For more information")
        {
            continue;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("{line} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fit_on_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <URL>\n  \
<MESSAGE>\n\nUsage: ns notify <URL> <MESSAGE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered),
            "the following required arguments were not provided: <URL>; <MESSAGE> (see --help)"
        );
        let rendered = "error: unexpected argument '--tll' found\n\n  tip: a similar argument \
exists: '--ttl'\n\nUsage: ns notify --ttl <TTL> <URL> <MESSAGE>\n";
        assert_eq!(
            usage_line(rendered),
            "unexpected argument '--tll' found; tip: a similar argument exists: '--ttl' (see --help)"
        );
    }
}
