//! TLS on every HTTP and WebSocket listener: the `--tls-cert` / `--tls-key` group, the
//! server configuration made from the PEM files, its reload on SIGHUP or when the files
//! change, and the handshake of an accepted connection.
//!
//! The configuration is built once, with a certificate resolver that hands out whatever
//! certificate was last read: a reload swaps that certificate only, so connections already
//! made keep theirs, and a reload that fails leaves the current one in place.

use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use clap::Args;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// How often the files' modification times are compared with those of the last read.
const POLL: Duration = Duration::from_secs(2);

/// The certificate and key every HTTP and WebSocket port of the process serves.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the certificate chain (the server's own certificate first). With it and
    /// --tls-key, every HTTP and WebSocket port speaks only TLS (`https://`, `wss://`).
    /// Both files are read again on SIGHUP and when either one's modification time changes;
    /// a reload that fails keeps the current certificate. Public URLs are not derived from
    /// it: set --notify-base-url to the `https://` origin application servers reach.
    #[arg(long, env = "NS_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Required with
    /// --tls-cert, and only with it.
    #[arg(long, env = "NS_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

impl TlsConfig {
    /// The TLS of the listeners, with the files read and checked; `None` when neither file
    /// is given.
    pub fn load(&self) -> Result<Option<Tls>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Tls::load(cert, key)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("TLS: {e}"))),
            (Some(_), None) => Err(ConfigError::Invalid(
                "--tls-cert / NS_TLS_CERT is given without --tls-key / NS_TLS_KEY: give both or \
                 neither"
                    .into(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "--tls-key / NS_TLS_KEY is given without --tls-cert / NS_TLS_CERT: give both or \
                 neither"
                    .into(),
            )),
        }
    }
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key", path.display())]
    NoKey { path: PathBuf },
    #[error("the private key of {} is not usable: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the key {} does not match the certificate {}: {source}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The TLS of a process's listeners: cheap to clone, every clone serving the same
/// (reloadable) certificate.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// The files' modification times when they were last read.
    read_at: Mutex<Stamps>,
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// The certificate handed to each new handshake.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Only ever replaced whole: a panic elsewhere can't leave it half-written.
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl Tls {
    /// Reads `cert` and `key` and makes the server configuration (ring's cryptography,
    /// TLS 1.2 and 1.3, HTTP/1.1 by ALPN: the ports speak nothing else).
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let read_at = stamps(cert, key);
        let certified = read_certified(&provider, cert, key)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            inner: Arc::new(Inner {
                cert: cert.to_owned(),
                key: key.to_owned(),
                provider,
                current,
                acceptor: TlsAcceptor::from(Arc::new(config)),
                read_at: Mutex::new(read_at),
            }),
        })
    }

    /// Reads the files again; new handshakes get the new certificate. On an error the
    /// current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let inner = &self.inner;
        *inner.read_at.lock().unwrap_or_else(PoisonError::into_inner) =
            stamps(&inner.cert, &inner.key);
        let certified = read_certified(&inner.provider, &inner.cert, &inner.key)?;
        *inner
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }

    /// The certificate new handshakes get (the server's own, first of its chain), DER.
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        let current = self
            .inner
            .current
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        current.cert.first().cloned()
    }

    /// Whether either file's modification time differs from the last read's.
    fn changed(&self) -> bool {
        let now = stamps(&self.inner.cert, &self.inner.key);
        *self
            .inner
            .read_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            != now
    }

    /// Reloads on SIGHUP, and when the files' modification times change (polled every
    /// [`POLL`]), logging the outcome; never returns.
    pub async fn watch(&self) -> Infallible {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: TLS files reloaded only when they change");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cause = tokio::select! {
                _ = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                _ = poll.tick() => "file change",
            };
            if cause == "SIGHUP" || self.changed() {
                self.reload_logged(cause);
            }
        }
    }

    fn reload_logged(&self, cause: &str) {
        let (cert, key) = (self.inner.cert.display(), self.inner.key.display());
        match self.reload() {
            Ok(()) => tracing::info!(%cause, %cert, %key, "TLS certificate reloaded"),
            Err(e) => tracing::error!(
                %cause, error = %e,
                "reloading the TLS certificate failed: the current one is kept"
            ),
        }
    }

    /// The TLS handshake of an accepted connection, to be done by `deadline`. `None` when
    /// it failed or took too long: a client's business, so logged at debug level only.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Instant,
    ) -> Option<TlsStream<TcpStream>> {
        // Recorded only when known: an Option would be logged as its Debug.
        let peer = stream.peer_addr().ok().map(tracing::field::display);
        match tokio::time::timeout_at(deadline, self.inner.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer, "TLS handshake timed out");
                None
            }
        }
    }
}

fn stamps(cert: &Path, key: &Path) -> Stamps {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The chain of `cert` with the key of `key`, checked to belong together.
fn read_certified(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        source => TlsError::Pem {
            path: key.to_owned(),
            source,
        },
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::Key {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsConfig,
    }

    /// A self-signed certificate for localhost: (certificate PEM, key PEM, certificate DER).
    fn self_signed() -> (String, String, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (
            certified.cert.pem(),
            certified.key_pair.serialize_pem(),
            certified.cert.der().to_vec(),
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn problem(config: &TlsConfig) -> String {
        match config.load() {
            Err(ConfigError::Invalid(problem)) => problem,
            Ok(_) => panic!("{config:?} was accepted"),
        }
    }

    #[test]
    fn neither_file_is_no_tls_and_one_alone_is_a_problem() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.tls.load().unwrap().is_none());
        let only_cert = Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).unwrap();
        assert!(problem(&only_cert.tls).contains("without --tls-key"));
        let only_key = Cli::try_parse_from(["x", "--tls-key", "k.pem"]).unwrap();
        assert!(problem(&only_key.tls).contains("without --tls-cert"));
    }

    #[test]
    fn bad_files_are_named_in_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = self_signed();
        let (other_cert, other_key, _) = self_signed();
        let cert = write(dir.path(), "cert.pem", &cert);
        let key = write(dir.path(), "key.pem", &key);
        let garbage = write(dir.path(), "garbage.pem", "not a certificate");
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let other_key = write(dir.path(), "other-key.pem", &other_key);
        let other_cert = write(dir.path(), "other-cert.pem", &other_cert);
        let missing = dir.path().join("missing.pem");
        let config = |cert: &Path, key: &Path| TlsConfig {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
        };
        assert!(config(&cert, &key).load().unwrap().is_some());
        assert!(problem(&config(&missing, &key)).contains("reading"));
        assert!(problem(&config(&missing, &key)).contains("missing.pem"));
        assert!(problem(&config(&garbage, &key)).contains("holds no certificate"));
        assert!(problem(&config(&broken, &key)).contains("not valid PEM"));
        assert!(problem(&config(&cert, &garbage)).contains("holds no private key"));
        assert!(problem(&config(&cert, &other_key)).contains("does not match"));
        // A certificate given as the key: no key in it.
        assert!(problem(&config(&cert, &other_cert)).contains("holds no private key"));
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_failed_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = self_signed();
        let cert_path = write(dir.path(), "cert.pem", &cert);
        let key_path = write(dir.path(), "key.pem", &key);
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        assert_eq!(tls.certificate().unwrap().as_ref(), first.as_slice());

        let (cert, key, second) = self_signed();
        write(dir.path(), "cert.pem", &cert);
        write(dir.path(), "key.pem", &key);
        tls.reload().unwrap();
        assert_eq!(tls.certificate().unwrap().as_ref(), second.as_slice());

        write(dir.path(), "cert.pem", "garbage");
        assert!(matches!(tls.reload(), Err(TlsError::NoCertificate { .. })));
        assert_eq!(tls.certificate().unwrap().as_ref(), second.as_slice());
        // Half of a new pair written: the key no longer matches; still the old one.
        let (cert, _, _) = self_signed();
        write(dir.path(), "cert.pem", &cert);
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(tls.certificate().unwrap().as_ref(), second.as_slice());
    }
}
