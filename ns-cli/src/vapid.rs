//! VAPID (RFC 8292) for a sender: ES256 keys, their PEM and applicationServerKey forms, and
//! the `Authorization: vapid t=..., k=...` header for an endpoint. The JWT itself is
//! `common::vapid::sign`, beside the server's verification of it.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::model::EpochSecs;
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::SecretKey;

use crate::error::Error;

/// How long a signature is valid: half the most the server accepts (24 h), as web-push does.
pub const VALID_FOR_SECS: i64 = 12 * 3600;

/// The subject sent when none is given.
pub const DEFAULT_SUBJECT: &str = "mailto:ns@localhost";

pub fn generate() -> SigningKey {
    SigningKey::random(&mut rand::rngs::OsRng)
}

/// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn to_pem(key: &SigningKey) -> Result<String, Error> {
    SecretKey::from(key)
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| Error::Internal(format!("encoding a P-256 key: {e}")))
}

/// The private key as web-push's `--vapid-pvtkey` takes it: base64url of the 32-byte scalar.
pub fn to_raw(key: &SigningKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_bytes())
}

/// The public key as a page gives it to `pushManager.subscribe()`: base64url of the
/// uncompressed point.
pub fn application_server_key(key: &SigningKey) -> String {
    let point = key.verifying_key().to_encoded_point(false);
    URL_SAFE_NO_PAD.encode(point.as_bytes())
}

/// Reads a VAPID private key: a file in PKCS#8 or SEC1 (`EC PRIVATE KEY`) PEM, or else the
/// argument itself as a base64url 32-byte key (web-push's form).
pub fn load(arg: &str) -> Result<SigningKey, Error> {
    let path = Path::new(arg);
    if !path.exists() {
        let raw = URL_SAFE_NO_PAD
            .decode(arg.trim().trim_end_matches('='))
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::bad_input(path, "no such file, nor a base64url 32-byte private key")
            })?;
        return SigningKey::from_slice(&raw)
            .map_err(|_| Error::bad_input(path, "not a P-256 private key"));
    }
    let text = crate::keys::read_pem(path)?;
    SecretKey::from_pkcs8_pem(&text)
        .or_else(|_| SecretKey::from_sec1_pem(&text))
        .map(SigningKey::from)
        .map_err(|_| Error::bad_input(path, "not a P-256 private key in PEM (PKCS#8 or SEC1)"))
}

/// The `Authorization` header value for a push to `endpoint`, valid until `exp`.
pub fn authorization(key: &SigningKey, endpoint: &str, exp: EpochSecs, subject: &str) -> String {
    common::vapid::sign(key, &origin(endpoint), exp, Some(subject))
}

/// `scheme://host[:port]` of a URL: the `aud` of a VAPID token.
pub fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_raw() {
        let key = generate();
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("vapid.pem");
        std::fs::write(&file, to_pem(&key).expect("PEM")).expect("written");
        let file = file.to_str().expect("UTF-8");
        assert_eq!(load(file).expect("PEM key").to_bytes(), key.to_bytes());
        assert_eq!(
            load(&to_raw(&key)).expect("raw key").to_bytes(),
            key.to_bytes()
        );
        assert_eq!(application_server_key(&key).len(), 87);
        assert!(load("nope").is_err());
    }

    #[test]
    fn origin_drops_the_path() {
        assert_eq!(origin("https://h:1/wpush/v2/x"), "https://h:1");
        assert_eq!(origin("http://h"), "http://h");
    }

    #[test]
    fn the_header_verifies() {
        let key = generate();
        let header = authorization(&key, "http://h:1/wpush/v2/x", EpochSecs(2000), "mailto:a@b");
        let vapid = common::vapid::verify(&header, None, "http://h:1", EpochSecs(1000));
        assert!(vapid.is_ok(), "{vapid:?}");
    }
}
