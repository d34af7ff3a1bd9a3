//! TLS for the tests: the test's own CA (made with rcgen) and the certificates it issues,
//! what a server is given (certificate and key files) and clients that trust that CA, for
//! its `https://` and `wss://` ports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The TLS of a test's server: its PEM files, and the CA that signed its certificate.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
}

impl ServerTls {
    /// The server's TLS as the service libraries take it.
    pub fn load(&self) -> ns_runtime::tls::Tls {
        ns_runtime::tls::Tls::load(&self.cert, &self.key).expect("the test's certificate")
    }

    /// The TLS settings of a binary's command line.
    pub fn config(&self) -> ns_runtime::tls::TlsConfig {
        ns_runtime::tls::TlsConfig {
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
        }
    }

    /// The environment that gives a binary this TLS.
    pub fn env(&self) -> [(String, String); 2] {
        [
            ("NS_TLS_CERT".into(), self.cert.display().to_string()),
            ("NS_TLS_KEY".into(), self.key.display().to_string()),
        ]
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_pem)
    }

    pub fn http_client_builder(&self) -> reqwest::ClientBuilder {
        http_client_builder(&self.ca_pem)
    }
}

/// A TLS client configuration that trusts only the CA of `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("a CA certificate");
    roots.add(ca).expect("a usable CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// An HTTP client builder that trusts only the CA of `ca_pem`.
pub fn http_client_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("a CA certificate");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
}

/// The test's certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate for 127.0.0.1 and localhost, issued by a [`Ca`].
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl Default for Ca {
    fn default() -> Ca {
        Ca::new()
    }
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "push-server test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("the CA certificate");
        Ca { cert, key }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by this CA.
    pub fn issue(&self) -> Issued {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "push-server test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a server certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// The files of a server's TLS, in a directory of the test's own.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub tls: ServerTls,
}

impl Files {
    pub fn new(ca: &Ca, issued: &Issued) -> Files {
        let dir = tempfile::tempdir().expect("a directory");
        let tls = ServerTls {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca_pem: ca.pem(),
        };
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("writing ca.pem");
        let files = Files { dir, tls };
        files.install(issued);
        files
    }

    /// Replaces the certificate and key, each file at once (renamed into place).
    pub fn install(&self, issued: &Issued) {
        replace(&self.tls.key, &issued.key_pem);
        replace(&self.tls.cert, &issued.cert_pem);
    }

    /// The CA's certificate file, for clients told to trust it.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Writes `text` to `path` at once: to a file beside it, renamed into place.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing a PEM file");
    std::fs::rename(&tmp, path).expect("renaming a PEM file into place");
}
