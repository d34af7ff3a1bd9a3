//! What can go wrong, and the exit status each failure gives: the one table a script relies
//! on (`ns --help` prints it, the crate docs repeat it).

use std::fmt;

/// The exit statuses of `ns`, after BSD's `sysexits.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok = 0,
    /// 64 (`EX_USAGE`): a bad command line: unknown option, missing argument, bad URL or value.
    Usage = 64,
    /// 65 (`EX_DATAERR`): the server refused the request with a protocol error; its code and
    /// reason are printed.
    Refused = 65,
    /// 66 (`EX_NOINPUT`): a file named on the command line can't be read, or isn't the key or
    /// certificate it should be.
    NoInput = 66,
    /// 69 (`EX_UNAVAILABLE`): the server can't be reached: connection refused, unknown host,
    /// TLS failure, timeout, or it closed a connection that should have stayed open.
    Unavailable = 69,
    /// 70 (`EX_SOFTWARE`): an internal error of `ns`.
    Software = 70,
    /// 73 (`EX_CANTCREAT`): an output file (`--out`) can't be created.
    CantCreate = 73,
    /// 74 (`EX_IOERR`): standard output can't be written.
    IoErr = 74,
    /// 75 (`EX_TEMPFAIL`): the server refused for now (HTTP 429 or 503): retry later.
    TempFail = 75,
    /// 76 (`EX_PROTOCOL`): the server answered something the protocol does not allow.
    Protocol = 76,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit table as `--help` shows it: a macro, so that `--help`'s text is made of it at
/// compile time.
macro_rules! exit_table {
    () => {
        "\
Exit status:
  0   done
  64  usage: bad command line, URL or option value
  65  the server refused the request (its error code and reason are printed)
  66  a key or certificate file can't be read or is not valid
  69  the server can't be reached (connection refused, unknown host, TLS, timeout,
      or it closed the connection)
  70  internal error
  73  an output file can't be created
  74  standard output can't be written
  75  the server refused for now (HTTP 429 or 503): retry later
  76  the server answered something outside the protocol"
    };
}
pub(crate) use exit_table;

/// Which protocol an error answer came in: it names its code differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PROTOCOL.md: `{"status": "ERROR", "reason", "code"}` or `{"error", "code"}`.
    Telefonica,
    /// WEBPUSH.md §3: `{"code", "errno", "error", "message"}`.
    WebPush,
    /// WEBPUSH.md §2: a UA message's `status`.
    WebPushUa,
}

/// The server's refusal, as it gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub dialect: Dialect,
    /// The HTTP status, when the refusal came over HTTP.
    pub http: Option<u16>,
    /// The protocol's code (Telefónica) or errno (Web Push).
    pub code: u64,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dialect {
            Dialect::Telefonica => write!(f, "code {}", self.code)?,
            Dialect::WebPush => write!(f, "errno {}", self.code)?,
            Dialect::WebPushUa => write!(f, "status {}", self.code)?,
        }
        if let Some(http) = self.http {
            write!(f, " (HTTP {http})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A failure of one command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("the server refused the request: {0}")]
    Refused(Refusal),
    #[error("{path}: {what}")]
    BadInput { path: String, what: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the server at {url}: {detail}")]
    Unavailable { url: String, detail: String },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to standard output: {0}")]
    Output(#[source] std::io::Error),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The exit status this failure gives.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            Error::Refused(r) if matches!(r.http, Some(429 | 503)) => Exit::TempFail,
            Error::Refused(_) => Exit::Refused,
            Error::BadInput { .. } | Error::Read { .. } => Exit::NoInput,
            Error::Unavailable { .. } => Exit::Unavailable,
            Error::Create { .. } => Exit::CantCreate,
            Error::Output(_) => Exit::IoErr,
            Error::Protocol(_) => Exit::Protocol,
            Error::Internal(_) => Exit::Software,
        }
    }

    /// A closed standard output (`ns listen | head -1`): the reader has what it wanted.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn bad_input(path: &std::path::Path, what: impl Into<String>) -> Error {
        Error::BadInput {
            path: path.display().to_string(),
            what: what.into(),
        }
    }

    pub fn read(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Read {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An error with its causes on one line: `a: b: c`, each cause said once.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_by_kind() {
        let refusal = |http| {
            Error::Refused(Refusal {
                dialect: Dialect::Telefonica,
                http,
                code: 455,
                reason: "bad signature".into(),
            })
        };
        assert_eq!(refusal(Some(401)).exit(), Exit::Refused);
        assert_eq!(refusal(None).exit(), Exit::Refused);
        assert_eq!(refusal(Some(503)).exit(), Exit::TempFail);
        assert_eq!(
            refusal(Some(401)).to_string(),
            "the server refused the request: code 455 (HTTP 401): bad signature"
        );
    }
}
