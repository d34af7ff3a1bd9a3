//! Standard output, written line by line and flushed, so that a reader of `ns listen` sees
//! each message as it comes; a write that fails is an error, not a panic as `println!`'s.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::error::Error;

/// Where results go: text lines, or one JSON object per line.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn line(&self, text: &str) -> Result<(), Error> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(Error::Output)
    }

    pub fn object(&self, value: &Value) -> Result<(), Error> {
        self.line(&value.to_string())
    }

    /// `value` with --json, `text` otherwise.
    pub fn either(&self, value: &Value, text: &str) -> Result<(), Error> {
        if self.json {
            self.object(value)
        } else {
            self.line(text)
        }
    }
}

/// A note for the person at the terminal, on standard error.
pub fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "ns: {text}");
}

/// Creates `path` with `text`, readable by its owner only; an existing file is left alone.
pub fn write_new(path: &Path, text: &str) -> Result<(), Error> {
    let create = |source| Error::Create {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(create)?;
    file.write_all(text.as_bytes()).map_err(create)
}

/// Replaces `path` with `text`, readable by its owner only (a state file written again).
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let create = |source| Error::Create {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(create)?;
    file.write_all(text.as_bytes()).map_err(create)
}
