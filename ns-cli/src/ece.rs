//! Web Push payload encryption: what a sender (pywebpush, web-push, `ns webpush send`) does
//! to a payload, and what the UA (`ns webpush listen`) does to read it, in RFC 8291
//! `aes128gcm` (one RFC 8188 record) and the legacy `aesgcm`
//! (draft-ietf-webpush-encryption-04) that Firefox still accepts.
//!
//! The server never decrypts; the protocol suite uses this too, to send real encrypted
//! bodies and to check that what a UA receives still opens with its keys, byte for byte.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

/// Length of an uncompressed P-256 point, as `p256dh` and the sender's `dh` are sent.
const POINT_LEN: usize = 65;
/// The record size senders use by default; a bigger one is chosen only for bodies that
/// would not fit one record, so tests can still make oversized messages.
const DEFAULT_RS: usize = 4096;
/// AES-GCM's authentication tag, at the end of every record.
const TAG_LEN: usize = 16;
/// `salt` (16) + `rs` (4) + `idlen` (1): the fixed part of the `aes128gcm` header.
const HEADER_LEN: usize = 21;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EceError {
    #[error("the key is not an uncompressed P-256 point")]
    BadKey,
    #[error("the body is shorter than its header or record size says")]
    Truncated,
    #[error("the record size is too small")]
    BadRecordSize,
    #[error("a record does not authenticate with these keys")]
    Decrypt,
    #[error("a record's padding or delimiter is wrong")]
    BadPadding,
    #[error("the `{0}` parameter is missing or not base64url")]
    BadParam(&'static str),
}

/// The UA's side of a subscription: its P-256 key pair and 16-byte auth secret.
pub struct Subscriber {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Subscriber {
    pub fn generate() -> Self {
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        Subscriber {
            secret: SecretKey::random(&mut OsRng),
            auth,
        }
    }

    /// A subscriber with known keys, for test vectors.
    pub fn from_parts(secret: &[u8], auth: [u8; 16]) -> Result<Self, EceError> {
        let secret = SecretKey::from_slice(secret).map_err(|_| EceError::BadKey)?;
        Ok(Subscriber { secret, auth })
    }

    /// The public key the UA hands out as `p256dh`: 65 bytes, uncompressed.
    pub fn p256dh(&self) -> Vec<u8> {
        point(&self.secret.public_key()).to_vec()
    }

    pub fn auth(&self) -> [u8; 16] {
        self.auth
    }

    /// The private scalar, 32 bytes, so that a UA can keep its subscription across runs
    /// (`from_parts` takes it back).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.to_bytes().to_vec()
    }

    /// Opens an `aes128gcm` body: the header carries salt, record size and the sender's key.
    pub fn decrypt_aes128gcm(&self, body: &[u8]) -> Result<Vec<u8>, EceError> {
        let header = body.get(..HEADER_LEN).ok_or(EceError::Truncated)?;
        let (salt, rest) = header.split_at(16);
        let rs = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let key_end = HEADER_LEN + usize::from(rest[4]);
        let sender = body.get(HEADER_LEN..key_end).ok_or(EceError::Truncated)?;
        let records = &body[key_end..];
        // A record holds at least the delimiter and the tag (RFC 8188 §2).
        if rs < TAG_LEN + 2 {
            return Err(EceError::BadRecordSize);
        }
        if records.is_empty() {
            return Err(EceError::Truncated);
        }
        let sender = parse_point(sender)?;
        let shared = ecdh(&self.secret, &sender);
        let (key, nonce) =
            aes128gcm_keys(&shared, &self.auth, &self.p256dh(), &point(&sender), salt);

        let count = records.len().div_ceil(rs);
        let mut out = Vec::with_capacity(records.len());
        for (seq, record) in records.chunks(rs).enumerate() {
            let plain = open(&key, &nonce, seq, record)?;
            // Padding is zeros after a delimiter: 2 ends the last record, 1 any other.
            let end = plain
                .iter()
                .rposition(|&b| b != 0)
                .ok_or(EceError::BadPadding)?;
            let want = if seq + 1 == count { 2 } else { 1 };
            if plain[end] != want {
                return Err(EceError::BadPadding);
            }
            out.extend_from_slice(&plain[..end]);
        }
        Ok(out)
    }

    /// Opens an `aesgcm` body, given the `Encryption` (`salt=`, optional `rs=`) and
    /// `Crypto-Key` (`dh=`) header values it came with.
    pub fn decrypt_aesgcm(
        &self,
        body: &[u8],
        encryption: &str,
        crypto_key: &str,
    ) -> Result<Vec<u8>, EceError> {
        let salt = param(encryption, "salt")
            .and_then(decode)
            .filter(|s| s.len() == 16)
            .ok_or(EceError::BadParam("salt"))?;
        let rs = match param(encryption, "rs") {
            None => DEFAULT_RS,
            Some(rs) => rs.parse().map_err(|_| EceError::BadParam("rs"))?,
        };
        let sender = param(crypto_key, "dh")
            .and_then(decode)
            .ok_or(EceError::BadParam("dh"))?;
        // A record holds at least the two-byte padding length.
        if rs < 3 {
            return Err(EceError::BadRecordSize);
        }
        // A full last record would let a truncation go unnoticed, so senders add a short
        // one; a body that ends on a record boundary has lost its end.
        let chunk = rs + TAG_LEN;
        if body.len() % chunk == 0 {
            return Err(EceError::Truncated);
        }
        let sender = parse_point(&sender)?;
        let shared = ecdh(&self.secret, &sender);
        let (key, nonce) = aesgcm_keys(&shared, &self.auth, &self.p256dh(), &point(&sender), &salt);

        let mut out = Vec::with_capacity(body.len());
        for (seq, record) in body.chunks(chunk).enumerate() {
            let plain = open(&key, &nonce, seq, record)?;
            let (len, rest) = plain.split_at_checked(2).ok_or(EceError::BadPadding)?;
            let pad = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let (padding, data) = rest.split_at_checked(pad).ok_or(EceError::BadPadding)?;
            if padding.iter().any(|&b| b != 0) {
                return Err(EceError::BadPadding);
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }
}

/// Encrypts `plaintext` as a sender does for `aes128gcm`, with a fresh key and salt, in one
/// record; fails if `p256dh` is not an uncompressed P-256 point.
pub fn encrypt_aes128gcm(
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EceError> {
    encrypt_aes128gcm_with(
        &SecretKey::random(&mut OsRng),
        &salt(),
        p256dh,
        auth,
        plaintext,
    )
}

/// An `aesgcm` message: the body and the header values sent with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AesGcm {
    pub body: Vec<u8>,
    /// `Encryption` header value: `salt=...` (and `;rs=...` for an oversized record).
    pub encryption: String,
    /// `Crypto-Key` header value: `dh=...`.
    pub crypto_key: String,
}

/// Encrypts `plaintext` as a sender does for the legacy `aesgcm`, in one record; fails if
/// `p256dh` is not an uncompressed P-256 point.
pub fn encrypt_aesgcm(p256dh: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<AesGcm, EceError> {
    encrypt_aesgcm_with(
        &SecretKey::random(&mut OsRng),
        &salt(),
        p256dh,
        auth,
        plaintext,
    )
}

fn encrypt_aes128gcm_with(
    sender: &SecretKey,
    salt: &[u8; 16],
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EceError> {
    let receiver = parse_point(p256dh)?;
    let sender_public = point(&sender.public_key());
    let (key, nonce) = aes128gcm_keys(&ecdh(sender, &receiver), auth, p256dh, &sender_public, salt);
    let rs = DEFAULT_RS.max(plaintext.len() + 1 + TAG_LEN);
    let rs = u32::try_from(rs).map_err(|_| EceError::BadRecordSize)?;

    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let mut body = Vec::with_capacity(HEADER_LEN + POINT_LEN + record.len() + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&rs.to_be_bytes());
    body.push(POINT_LEN as u8);
    body.extend_from_slice(&sender_public);
    body.extend_from_slice(&seal(&key, &nonce, &record));
    Ok(body)
}

fn encrypt_aesgcm_with(
    sender: &SecretKey,
    salt: &[u8; 16],
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<AesGcm, EceError> {
    let receiver = parse_point(p256dh)?;
    let sender_public = point(&sender.public_key());
    let (key, nonce) = aesgcm_keys(&ecdh(sender, &receiver), auth, p256dh, &sender_public, salt);

    // Two bytes of padding length (zero), then the data; the record must stay shorter than
    // `rs`, or the receiver would expect another record after it.
    let mut record = Vec::with_capacity(plaintext.len() + 2);
    record.extend_from_slice(&[0, 0]);
    record.extend_from_slice(plaintext);
    let mut encryption = format!("salt={}", URL_SAFE_NO_PAD.encode(salt));
    if record.len() >= DEFAULT_RS {
        encryption.push_str(&format!(";rs={}", record.len() + 1));
    }
    Ok(AesGcm {
        body: seal(&key, &nonce, &record),
        encryption,
        crypto_key: format!("dh={}", URL_SAFE_NO_PAD.encode(sender_public)),
    })
}

/// RFC 8291 §3.3–3.4: the auth secret and both public keys go into the IKM, then RFC 8188
/// derives the content key and nonce from it with the salt.
fn aes128gcm_keys(
    shared: &[u8],
    auth: &[u8],
    receiver: &[u8],
    sender: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let ikm: [u8; 32] = hkdf(auth, shared, &[b"WebPush: info\0", receiver, sender]);
    (
        hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"]),
        hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"]),
    )
}

/// draft-ietf-webpush-encryption-04: the public keys go into a length-prefixed context
/// instead, appended to the content key and nonce labels.
fn aesgcm_keys(
    shared: &[u8],
    auth: &[u8],
    receiver: &[u8],
    sender: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let ikm: [u8; 32] = hkdf(auth, shared, &[b"Content-Encoding: auth\0"]);
    let mut context = b"P-256\0".to_vec();
    for key in [receiver, sender] {
        // Both keys are 65-byte points, checked by the callers.
        context.extend_from_slice(&(key.len() as u16).to_be_bytes());
        context.extend_from_slice(key);
    }
    (
        hkdf(salt, &ikm, &[b"Content-Encoding: aesgcm\0", &context]),
        hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0", &context]),
    )
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand_multi_info(info, &mut out)
        .expect("N is at most 32, far below HKDF-SHA-256's limit");
    out
}

fn ecdh(secret: &SecretKey, public: &PublicKey) -> Vec<u8> {
    p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine())
        .raw_secret_bytes()
        .to_vec()
}

/// The nonce of record `seq`: the base nonce with `seq` XORed into its last bytes.
fn record_nonce(base: &[u8; 12], seq: usize) -> [u8; 12] {
    let mut nonce = *base;
    for (n, s) in nonce[4..].iter_mut().zip((seq as u64).to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

fn seal(key: &[u8; 16], nonce: &[u8; 12], record: &[u8]) -> Vec<u8> {
    Aes128Gcm::new(key.into())
        .encrypt(Nonce::from_slice(nonce), record)
        .expect("one record is far below AES-GCM's length limit")
}

fn open(key: &[u8; 16], nonce: &[u8; 12], seq: usize, record: &[u8]) -> Result<Vec<u8>, EceError> {
    Aes128Gcm::new(key.into())
        .decrypt(Nonce::from_slice(&record_nonce(nonce, seq)), record)
        .map_err(|_| EceError::Decrypt)
}

fn parse_point(bytes: &[u8]) -> Result<PublicKey, EceError> {
    if bytes.len() != POINT_LEN || bytes[0] != 0x04 {
        return Err(EceError::BadKey);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| EceError::BadKey)
}

fn point(key: &PublicKey) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(key.to_encoded_point(false).as_bytes());
    out
}

fn salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    salt
}

/// The value of `name` in a header of `;`- or `,`-separated `name=value` parameters.
fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split([';', ',']).find_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// Base64url, padded or not, as senders differ.
fn decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8291 §5 and Appendix A.
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const AES128GCM_BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
    /// The same keys and salt through `aesgcm`, made by Python's `http_ece` 1.2.1 (the
    /// reference implementation by the drafts' author).
    const AESGCM_BODY: &str =
        "4qwOLFm_mNy0vf1A8f3Bm6B5UD15y3aV_xZy14pixUhcPTIoZKHzq5i3dZ6PzqSMxBI_-VDUZ4jW04M";

    fn b64(s: &str) -> Vec<u8> {
        decode(s).expect("base64url")
    }

    fn rfc_parts() -> (SecretKey, [u8; 16], Subscriber) {
        let sender = SecretKey::from_slice(&b64(AS_PRIVATE)).expect("scalar");
        let salt: [u8; 16] = b64(SALT).try_into().expect("16 bytes");
        let auth: [u8; 16] = b64(AUTH).try_into().expect("16 bytes");
        let ua = Subscriber::from_parts(&b64(UA_PRIVATE), auth).expect("scalar");
        (sender, salt, ua)
    }

    #[test]
    fn rfc8291_vector() {
        let (sender, salt, ua) = rfc_parts();
        assert_eq!(ua.p256dh(), b64(UA_PUBLIC));
        assert_eq!(point(&sender.public_key()).to_vec(), b64(AS_PUBLIC));
        let body = encrypt_aes128gcm_with(&sender, &salt, &ua.p256dh(), &ua.auth(), PLAINTEXT)
            .expect("valid keys");
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), AES128GCM_BODY);
        assert_eq!(
            ua.decrypt_aes128gcm(&b64(AES128GCM_BODY)),
            Ok(PLAINTEXT.to_vec())
        );
    }

    #[test]
    fn aesgcm_vector_from_http_ece() {
        let (sender, salt, ua) = rfc_parts();
        let m = encrypt_aesgcm_with(&sender, &salt, &ua.p256dh(), &ua.auth(), PLAINTEXT)
            .expect("valid keys");
        assert_eq!(URL_SAFE_NO_PAD.encode(&m.body), AESGCM_BODY);
        assert_eq!(m.encryption, format!("salt={SALT}"));
        assert_eq!(m.crypto_key, format!("dh={AS_PUBLIC}"));
        // Header values as pywebpush sends them with VAPID, padding and all.
        let crypto_key = format!("dh={AS_PUBLIC}=;p256ecdsa=BAIX5hfw");
        assert_eq!(
            ua.decrypt_aesgcm(&b64(AESGCM_BODY), &format!("salt={SALT}=="), &crypto_key),
            Ok(PLAINTEXT.to_vec())
        );
    }

    #[test]
    fn round_trips() {
        let ua = Subscriber::generate();
        assert_eq!(ua.p256dh().len(), 65);
        for len in [0, 1, 100, 3993, 4094, 5000] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let body = encrypt_aes128gcm(&ua.p256dh(), &ua.auth(), &plaintext).expect("a point");
            assert_eq!(body.len(), 86 + len + 17);
            assert_eq!(ua.decrypt_aes128gcm(&body), Ok(plaintext.clone()), "{len}");

            let m = encrypt_aesgcm(&ua.p256dh(), &ua.auth(), &plaintext).expect("a point");
            assert_eq!(m.body.len(), len + 18);
            assert_eq!(
                ua.decrypt_aesgcm(&m.body, &m.encryption, &m.crypto_key),
                Ok(plaintext),
                "{len}"
            );
        }
    }

    #[test]
    fn wrong_subscriber_or_tampering_fails() {
        let (ua, other) = (Subscriber::generate(), Subscriber::generate());
        let mut body = encrypt_aes128gcm(&ua.p256dh(), &ua.auth(), b"hi").expect("a point");
        assert_eq!(other.decrypt_aes128gcm(&body), Err(EceError::Decrypt));
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(ua.decrypt_aes128gcm(&body), Err(EceError::Decrypt));

        let m = encrypt_aesgcm(&ua.p256dh(), &ua.auth(), b"hi").expect("a point");
        assert_eq!(
            other.decrypt_aesgcm(&m.body, &m.encryption, &m.crypto_key),
            Err(EceError::Decrypt)
        );
        assert_eq!(
            ua.decrypt_aesgcm(&m.body, "rs=4096", &m.crypto_key),
            Err(EceError::BadParam("salt"))
        );
        assert_eq!(
            ua.decrypt_aesgcm(&m.body, &m.encryption, "p256ecdsa=x"),
            Err(EceError::BadParam("dh"))
        );
    }

    #[test]
    fn multi_record_aes128gcm_decrypts() {
        // RFC 8188 allows several records; with rs = 19 each holds three bytes: two of data
        // and the delimiter 1, and the last one byte, the delimiter 2 and a zero of padding.
        let (sender, salt, ua) = rfc_parts();
        let (key, nonce) = aes128gcm_keys(
            &ecdh(&sender, &ua.secret.public_key()),
            &ua.auth,
            &ua.p256dh(),
            &b64(AS_PUBLIC),
            &salt,
        );
        let mut body = salt.to_vec();
        body.extend_from_slice(&19u32.to_be_bytes());
        body.push(65);
        body.extend_from_slice(&b64(AS_PUBLIC));
        let chunks: [&[u8]; 3] = [b"ab", b"cd", b"e"];
        for (seq, chunk) in chunks.iter().enumerate() {
            let mut record = chunk.to_vec();
            record.push(if seq == 2 { 2 } else { 1 });
            record.resize(3, 0);
            body.extend_from_slice(&seal(&key, &record_nonce(&nonce, seq), &record));
        }
        assert_eq!(ua.decrypt_aes128gcm(&body), Ok(b"abcde".to_vec()));
    }

    #[test]
    fn garbage_is_an_error() {
        let ua = Subscriber::generate();
        let body = encrypt_aes128gcm(&ua.p256dh(), &ua.auth(), b"hi").expect("a point");
        assert_eq!(ua.decrypt_aes128gcm(&[]), Err(EceError::Truncated));
        assert_eq!(ua.decrypt_aes128gcm(&body[..40]), Err(EceError::Truncated));
        assert_eq!(ua.decrypt_aes128gcm(&body[..86]), Err(EceError::Truncated));
        let mut small_rs = body.clone();
        small_rs[16..20].copy_from_slice(&17u32.to_be_bytes());
        assert_eq!(
            ua.decrypt_aes128gcm(&small_rs),
            Err(EceError::BadRecordSize)
        );
        let mut bad_key = body.clone();
        bad_key[22] ^= 1;
        assert_eq!(ua.decrypt_aes128gcm(&bad_key), Err(EceError::BadKey));
        let dh = format!("dh={}", URL_SAFE_NO_PAD.encode(ua.p256dh()));
        let salt = "salt=AAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            ua.decrypt_aesgcm(&[0; 4112], salt, &dh),
            Err(EceError::Truncated)
        );
        assert_eq!(ua.decrypt_aesgcm(&[], salt, &dh), Err(EceError::Truncated));
        assert_eq!(
            ua.decrypt_aesgcm(&[1], &format!("{salt};rs=2"), &dh),
            Err(EceError::BadRecordSize)
        );
        assert_eq!(
            ua.decrypt_aesgcm(&[1], &format!("{salt};rs=x"), &dh),
            Err(EceError::BadParam("rs"))
        );
        assert_eq!(
            ua.decrypt_aesgcm(&[1; 17], salt, "dh=AAAA"),
            Err(EceError::BadKey)
        );
        assert!(Subscriber::from_parts(&[0; 32], [0; 16]).is_err());
    }
}
