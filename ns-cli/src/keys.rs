//! The RSA keys of PROTOCOL.md: a WA registers the public key (`pbkbase64`, base64 of its
//! PEM) and its application server signs each `message` with the private key,
//! RSA-SHA256 PKCS#1 v1.5, hex-encoded.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use crate::error::Error;

/// The largest key file read: a 16384-bit private key's PEM is about 13 KB.
const MAX_PEM_BYTES: u64 = 64 * 1024;

pub fn generate(bits: usize) -> Result<RsaPrivateKey, Error> {
    RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| Error::Internal(format!("generating an RSA key: {e}")))
}

/// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn private_pem(key: &RsaPrivateKey) -> Result<String, Error> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| Error::Internal(format!("encoding an RSA key: {e}")))
}

/// The `pbkbase64` of `register/wa`: base64 of the SPKI PEM of the public key.
pub fn pbkbase64(key: &RsaPublicKey) -> Result<String, Error> {
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("encoding an RSA public key: {e}")))?;
    Ok(STANDARD.encode(pem))
}

/// The hex RSA-SHA256 signature of `message`, as the notify body's `signature`.
pub fn sign(key: &RsaPrivateKey, message: &str) -> String {
    let signer = SigningKey::<Sha256>::new(key.clone());
    hex::encode(signer.sign(message.as_bytes()).to_bytes())
}

/// Reads a private key, PKCS#8 or PKCS#1 PEM.
pub fn load_private(path: &Path) -> Result<RsaPrivateKey, Error> {
    let pem = read_pem(path)?;
    RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|_| Error::bad_input(path, "not an RSA private key in PEM (PKCS#8 or PKCS#1)"))
}

/// Reads a public key, or the public half of a private key, in any PEM form of either.
pub fn load_public(path: &Path) -> Result<RsaPublicKey, Error> {
    let pem = read_pem(path)?;
    RsaPublicKey::from_public_key_pem(&pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(&pem))
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(&pem).map(|k| k.to_public_key()))
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem).map(|k| k.to_public_key()))
        .map_err(|_| Error::bad_input(path, "not an RSA key in PEM"))
}

/// The first PEM block of a file, from its `-----BEGIN` line to the matching end: text
/// before it (such as the line `ns keygen` prints above the key) is skipped.
pub fn read_pem(path: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::read(path, e))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(Error::bad_input(path, "too big for a key file"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::bad_input(path, "not a PEM file"))?;
    let start = text
        .find("-----BEGIN ")
        .ok_or_else(|| Error::bad_input(path, "no PEM block (-----BEGIN ...) in it"))?;
    let block = &text[start..];
    let end = block
        .find("-----END ")
        .and_then(|i| block[i + 9..].find("-----").map(|j| i + 9 + j + 5))
        .ok_or_else(|| Error::bad_input(path, "a PEM block without its -----END line"))?;
    Ok(block[..end].to_owned() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_what_the_server_verifies() {
        let key = generate(1024).expect("a key");
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("key.pem");
        let text = format!("pbkbase64: x\n{}", private_pem(&key).expect("PEM"));
        std::fs::write(&file, text).expect("written");
        let loaded = load_private(&file).expect("the key back");
        let public = load_public(&file).expect("its public half");
        let pbk = common::crypto::PublicKey::from_base64(&pbkbase64(&public).expect("pbk"))
            .expect("a key the server takes");
        assert!(pbk.verify(b"hi", &sign(&loaded, "hi")).is_ok());
        assert!(pbk.verify(b"ho", &sign(&loaded, "hi")).is_err());
    }

    #[test]
    fn bad_files_are_input_errors() {
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("bad.pem");
        std::fs::write(
            &file,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("written");
        assert!(matches!(load_private(&file), Err(Error::BadInput { .. })));
        assert!(matches!(
            load_private(&dir.path().join("missing")),
            Err(Error::Read { .. })
        ));
    }
}
