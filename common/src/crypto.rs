//! Pure crypto: uatokens, appToken derivation, RSA-SHA256 signature checks.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

use crate::model::{AppToken, UaId};

type HmacSha256 = Hmac<Sha256>;

/// Random bytes in a uatoken (128 bits) and the length of its truncated tag.
const TOKEN_RANDOM: usize = 16;
pub(crate) const TOKEN_TAG: usize = 16;

/// Largest accepted `pbkbase64`, decoded: a 8192-bit key's PEM is well under this.
const MAX_PEM: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the public key is not base64 of a PEM RSA public key")]
    BadPublicKey,
    #[error("the signature is not hex")]
    BadSignatureEncoding,
    #[error("the signature does not match the message")]
    BadSignature,
}

/// The cluster's shared secret. `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// A fresh random secret, printed as URL-safe base64 where it must be kept.
    pub fn generate() -> (Self, String) {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let text = URL_SAFE_NO_PAD.encode(bytes);
        (Secret(text.clone().into_bytes()), text)
    }

    pub(crate) fn mac(&self, domain: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(domain);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A new uatoken: 128 random bits followed by a truncated HMAC of them, URL-safe base64.
pub fn new_uatoken(secret: &Secret) -> String {
    new_bearer(secret, b"uatoken\0")
}

/// Checks a uatoken without any look-up; returns the UA's internal id when it is genuine.
pub fn verify_uatoken(secret: &Secret, token: &str) -> Option<UaId> {
    verify_bearer(secret, b"uatoken\0", token).then(|| ua_id(token))
}

/// A bearer token of one kind (`domain`): random bits and their tag, 43 characters.
pub(crate) fn new_bearer(secret: &Secret, domain: &[u8]) -> String {
    let mut raw = [0u8; TOKEN_RANDOM + TOKEN_TAG];
    rand::thread_rng().fill_bytes(&mut raw[..TOKEN_RANDOM]);
    let tag = token_tag(secret, domain, &raw[..TOKEN_RANDOM]);
    raw[TOKEN_RANDOM..].copy_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether `token` is a genuine bearer token of this kind.
pub(crate) fn verify_bearer(secret: &Secret, domain: &[u8], token: &str) -> bool {
    if token.len() != 43 {
        return false;
    }
    let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    if raw.len() != TOKEN_RANDOM + TOKEN_TAG {
        return false;
    }
    let expected = token_tag(secret, domain, &raw[..TOKEN_RANDOM]);
    bool::from(expected.ct_eq(&raw[TOKEN_RANDOM..]))
}

/// A truncated HMAC of `data` under the secret, for one kind (`domain`) of credential.
pub(crate) fn token_tag(secret: &Secret, domain: &[u8], data: &[u8]) -> [u8; TOKEN_TAG] {
    let mut mac = secret.mac(domain);
    mac.update(data);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TOKEN_TAG];
    tag.copy_from_slice(&full[..TOKEN_TAG]);
    tag
}

/// The internal id of a UA, derived from its token so the token need not be stored.
pub fn ua_id(token: &str) -> UaId {
    let digest = Sha256::digest(token.as_bytes());
    UaId::new(hex::encode(&digest[..16]))
}

/// A WA's public key, decoded from `pbkbase64` and checked to be an RSA key.
#[derive(Clone)]
pub struct PublicKey {
    pem: String,
    key: VerifyingKey<Sha256>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(..)")
    }
}

impl PublicKey {
    /// Parses `pbkbase64`: base64 of a PEM "PUBLIC KEY" (SPKI) or "RSA PUBLIC KEY" (PKCS#1).
    pub fn from_base64(pbkbase64: &str) -> Result<Self, CryptoError> {
        let pem_bytes = STANDARD
            .decode(pbkbase64.trim())
            .map_err(|_| CryptoError::BadPublicKey)?;
        if pem_bytes.len() > MAX_PEM {
            return Err(CryptoError::BadPublicKey);
        }
        let pem = String::from_utf8(pem_bytes).map_err(|_| CryptoError::BadPublicKey)?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        let pem = pem.trim();
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| CryptoError::BadPublicKey)?;
        Ok(PublicKey {
            pem: pem.to_owned(),
            key: VerifyingKey::new(key),
        })
    }

    /// The normalized PEM, as stored and as fed into the appToken derivation.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Verifies an RSA-SHA256 PKCS#1 v1.5 signature, given as hex, over `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> Result<(), CryptoError> {
        let raw =
            hex::decode(signature_hex.trim()).map_err(|_| CryptoError::BadSignatureEncoding)?;
        let signature =
            Signature::try_from(raw.as_slice()).map_err(|_| CryptoError::BadSignature)?;
        self.key
            .verify(message, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

/// The appToken of a WA registration: an HMAC of the watoken and key under the secret,
/// so it is the same for every UA that registers them and unguessable without the secret.
pub fn app_token(secret: &Secret, watoken: &str, pbk: Option<&PublicKey>) -> AppToken {
    let mut mac = secret.mac(b"apptoken\0");
    mac.update(&(watoken.len() as u64).to_be_bytes());
    mac.update(watoken.as_bytes());
    if let Some(key) = pbk {
        mac.update(b"\0pbk\0");
        mac.update(key.pem().as_bytes());
    }
    AppToken::new(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// An appToken has the shape `app_token` produces: 43 URL-safe base64 characters.
pub fn looks_like_app_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::RsaPrivateKey;

    fn secret() -> Secret {
        Secret::new("test-secret")
    }

    #[test]
    fn uatoken_round_trips_and_is_url_safe() {
        let token = new_uatoken(&secret());
        assert_eq!(token.len(), 43);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(verify_uatoken(&secret(), &token), Some(ua_id(&token)));
        assert_ne!(new_uatoken(&secret()), token);
    }

    #[test]
    fn forged_or_altered_tokens_are_rejected() {
        let token = new_uatoken(&secret());
        assert_eq!(verify_uatoken(&Secret::new("other"), &token), None);
        let mut altered = token.clone().into_bytes();
        altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            verify_uatoken(&secret(), &String::from_utf8(altered).unwrap()),
            None
        );
        assert_eq!(verify_uatoken(&secret(), ""), None);
        assert_eq!(verify_uatoken(&secret(), "not a token"), None);
        assert_eq!(verify_uatoken(&secret(), &"A".repeat(43)), None);
    }

    #[test]
    fn ua_id_hides_the_token() {
        let token = new_uatoken(&secret());
        let id = ua_id(&token);
        assert_eq!(id.as_str().len(), 32);
        assert!(!token.contains(id.as_str()));
    }

    #[test]
    fn app_token_is_deterministic_and_keyed() {
        let a = app_token(&secret(), "wa1", None);
        assert_eq!(a, app_token(&secret(), "wa1", None));
        assert!(looks_like_app_token(a.as_str()));
        assert_ne!(a, app_token(&secret(), "wa2", None));
        assert_ne!(a, app_token(&Secret::new("other"), "wa1", None));
        let (_, key) = keypair();
        assert_ne!(a, app_token(&secret(), "wa1", Some(&key)));
    }

    fn keypair() -> (SigningKey<Sha256>, PublicKey) {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let public = PublicKey::from_base64(&STANDARD.encode(pem)).unwrap();
        (SigningKey::<Sha256>::new(private), public)
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let (signer, public) = keypair();
        let sig = hex::encode(signer.sign(b"hello").to_bytes());
        assert_eq!(public.verify(b"hello", &sig), Ok(()));
        assert_eq!(
            public.verify(b"hellO", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            public.verify(b"hello", "zz"),
            Err(CryptoError::BadSignatureEncoding)
        );
        assert_eq!(
            public.verify(b"hello", "abcd"),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn bad_public_keys_are_rejected() {
        assert!(PublicKey::from_base64("%%%").is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode("not a pem")).is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode("x".repeat(10_000))).is_err());
    }
}
