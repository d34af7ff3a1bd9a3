//! VAPID (RFC 8292): P-256 public keys as Web Push carries them, and the check of the ES256
//! JWT a sender puts in `Authorization`, in both the RFC form and the older `WebPush` form.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use crate::model::EpochSecs;

/// Length of an uncompressed SEC1 P-256 point: the `0x04` tag, then x and y.
const POINT_LEN: usize = 65;

/// The farthest in the future a JWT may expire (RFC 8292 §2: at most 24 hours).
pub const MAX_EXPIRY_SECS: i64 = 86_400;

/// Longest JWT looked at. Real ones are about 300 characters; the bound keeps hostile
/// headers from costing more than a small parse.
const MAX_JWT_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VapidError {
    #[error("no VAPID Authorization header")]
    Missing,
    #[error("the Authorization header is neither `vapid t=<JWT>,k=<key>` nor `WebPush <JWT>`")]
    MalformedHeader,
    #[error("no VAPID public key: no `k=` parameter, nor `p256ecdsa=` in Crypto-Key")]
    MissingKey,
    #[error("the VAPID public key is not base64url of an uncompressed P-256 point")]
    BadKey,
    #[error("the VAPID token is not a JWT of three base64url parts with JSON header and claims")]
    BadJwt,
    #[error("the VAPID JWT is not signed with ES256")]
    WrongAlgorithm,
    #[error("the VAPID JWT signature does not match the public key")]
    BadSignature,
    #[error("the VAPID JWT claim `{0}` is missing or of the wrong type")]
    BadClaim(&'static str),
    #[error("the VAPID JWT audience is not this push service's origin")]
    WrongAudience,
    #[error("the VAPID JWT has expired")]
    Expired,
    #[error("the VAPID JWT expires more than 24 hours from now")]
    ExpiryTooFar,
}

/// An uncompressed P-256 public key (65 bytes, 0x04 prefix), validated as a point on the curve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; POINT_LEN]);

impl PublicKey {
    /// Parses base64url of an uncompressed point, with or without `=` padding. The standard
    /// alphabet is accepted too, since some senders and UAs emit it.
    pub fn from_base64(s: &str) -> Result<PublicKey, VapidError> {
        let s = s.trim().trim_end_matches('=');
        let s: String = s
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let bytes = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| VapidError::BadKey)?;
        PublicKey::from_bytes(&bytes)
    }

    /// Takes the 65 bytes of an uncompressed point; compressed points are refused because
    /// Web Push always sends keys uncompressed.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, VapidError> {
        let point: [u8; POINT_LEN] = bytes.try_into().map_err(|_| VapidError::BadKey)?;
        if point[0] != 0x04 {
            return Err(VapidError::BadKey);
        }
        VerifyingKey::from_sec1_bytes(&point).map_err(|_| VapidError::BadKey)?;
        Ok(PublicKey(point))
    }

    /// The 65 bytes of the uncompressed point.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base64url without padding, the form VAPID's `k=` and `applicationServerKey` use.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    fn verifying_key(&self) -> Result<VerifyingKey, VapidError> {
        VerifyingKey::from_sec1_bytes(&self.0).map_err(|_| VapidError::BadKey)
    }
}

impl From<&VerifyingKey> for PublicKey {
    fn from(key: &VerifyingKey) -> PublicKey {
        let point = key.to_encoded_point(false);
        let mut bytes = [0u8; POINT_LEN];
        // An uncompressed P-256 point is always 65 bytes, so this copies the whole point.
        bytes.copy_from_slice(point.as_bytes());
        PublicKey(bytes)
    }
}

/// A VAPID header that checked out: the sender's key, its optional `sub` contact, and when
/// the token stops being valid (its `exp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vapid {
    pub key: PublicKey,
    pub subject: Option<String>,
    pub expires: EpochSecs,
}

/// Verifies a VAPID Authorization header for a push service at `origin` (such as
/// `http://127.0.0.1:8081`).
///
/// Both forms: `vapid t=<JWT>,k=<key>` (any order, spaces allowed, scheme in any case) and
/// `WebPush <JWT>` with the key in `crypto_key`'s `p256ecdsa=` parameter. The JWT must be
/// ES256, signed by the key, with `aud` equal to `origin` or to `origin` without its port,
/// and `exp` after `now` and at most 24 hours ahead.
pub fn verify(
    authorization: &str,
    crypto_key: Option<&str>,
    origin: &str,
    now: EpochSecs,
) -> Result<Vapid, VapidError> {
    let (jwt, key) = parse_header(authorization, crypto_key)?;
    let key = PublicKey::from_base64(key)?;
    if jwt.len() > MAX_JWT_LEN {
        return Err(VapidError::BadJwt);
    }
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::BadJwt);
    };

    let header = decode_json(header)?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(VapidError::WrongAlgorithm);
    }

    // The signature is checked before any claim is read, so nothing unauthenticated decides
    // the outcome beyond the algorithm.
    let signature = decode_b64(signature_b64)?;
    let signature = Signature::from_slice(&signature).map_err(|_| VapidError::BadSignature)?;
    let signed = &jwt[..jwt.len() - signature_b64.len() - 1];
    key.verifying_key()?
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VapidError::BadSignature)?;

    let claims = decode_json(claims)?;
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .ok_or(VapidError::BadClaim("aud"))?;
    if !audience_matches(aud, origin) {
        return Err(VapidError::WrongAudience);
    }
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(VapidError::BadClaim("exp"))?;
    if exp <= now.0 {
        return Err(VapidError::Expired);
    }
    if exp > now.0.saturating_add(MAX_EXPIRY_SECS) {
        return Err(VapidError::ExpiryTooFar);
    }
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(VapidError::BadClaim("sub")),
    };
    Ok(Vapid {
        key,
        subject,
        expires: EpochSecs(exp),
    })
}

/// Signs a VAPID JWT (for the load generator and tests) and returns the header value
/// `vapid t=<jwt>,k=<key>`.
pub fn sign(key: &SigningKey, aud: &str, exp: EpochSecs, subject: Option<&str>) -> String {
    let mut claims = Map::new();
    claims.insert("aud".into(), Value::from(aud));
    claims.insert("exp".into(), Value::from(exp.0));
    if let Some(sub) = subject {
        claims.insert("sub".into(), Value::from(sub));
    }
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
    let signed = format!("{header}.{claims}");
    let signature: Signature = key.sign(signed.as_bytes());
    let public = PublicKey::from(key.verifying_key());
    format!(
        "vapid t={signed}.{},k={}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        public.to_base64()
    )
}

/// Splits the header into the JWT and the (still encoded) key, from whichever form it has.
fn parse_header<'a>(
    authorization: &'a str,
    crypto_key: Option<&'a str>,
) -> Result<(&'a str, &'a str), VapidError> {
    let authorization = authorization.trim();
    if authorization.is_empty() {
        return Err(VapidError::Missing);
    }
    let (scheme, rest) = authorization
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(VapidError::MalformedHeader)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("vapid") {
        let (mut t, mut k) = (None, None);
        for param in rest.split(',') {
            let (name, value) = param
                .trim()
                .split_once('=')
                .ok_or(VapidError::MalformedHeader)?;
            let slot = match name.trim() {
                n if n.eq_ignore_ascii_case("t") => &mut t,
                n if n.eq_ignore_ascii_case("k") => &mut k,
                // Parameters that a later revision may add are not ours to refuse.
                _ => continue,
            };
            if slot.replace(unquote(value.trim())).is_some() {
                return Err(VapidError::MalformedHeader);
            }
        }
        let t = t.ok_or(VapidError::MalformedHeader)?;
        let k = k.ok_or(VapidError::MissingKey)?;
        Ok((t, k))
    } else if scheme.eq_ignore_ascii_case("webpush") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(VapidError::MalformedHeader);
        }
        let k = crypto_key
            .and_then(|h| param(h, "p256ecdsa"))
            .ok_or(VapidError::MissingKey)?;
        Ok((rest, k))
    } else {
        Err(VapidError::MalformedHeader)
    }
}

/// The value of `name` in a header of `;`- or `,`-separated `name=value` parameters, such
/// as `Crypto-Key: dh=...;p256ecdsa=...`.
fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split([';', ',']).find_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| unquote(v.trim()))
    })
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// Decodes one JWT part; a stray `=` padding is forgiven, since some encoders add it.
fn decode_b64(part: &str) -> Result<Vec<u8>, VapidError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| VapidError::BadJwt)
}

fn decode_json(part: &str) -> Result<Map<String, Value>, VapidError> {
    match serde_json::from_slice(&decode_b64(part)?) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VapidError::BadJwt),
    }
}

/// A JWT NumericDate: seconds, possibly with a fraction (RFC 7519 §2), floored.
fn numeric_date(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })
}

/// `aud` names the push service's origin; the `web-push` crate leaves the port out, so the
/// origin without its port is accepted as well.
fn audience_matches(aud: &str, origin: &str) -> bool {
    let aud = aud.to_ascii_lowercase();
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    aud == origin || strip_port(&origin).is_some_and(|o| aud == o)
}

/// `scheme://host:port` → `scheme://host`; `None` when there is no port. An IPv6 host is
/// bracketed, so only a colon after the `]` starts a port.
fn strip_port(origin: &str) -> Option<&str> {
    let authority = origin.find("://")? + 3;
    let colon = origin.rfind(':').filter(|&i| i >= authority)?;
    let (host, port) = (&origin[authority..colon], &origin[colon + 1..]);
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = !host.is_empty() && (!host.starts_with('[') || host.ends_with(']'));
    (port_ok && host_ok).then(|| &origin[..colon])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "http://127.0.0.1:8081";
    const NOW: EpochSecs = EpochSecs(1_700_000_000);

    fn key(seed: u8) -> SigningKey {
        // A fixed non-zero scalar below the group order, so tests are repeatable.
        let mut bytes = [seed; 32];
        bytes[0] = 0x01;
        SigningKey::from_slice(&bytes).expect("valid scalar")
    }

    fn header(aud: &str, exp: i64) -> String {
        sign(&key(7), aud, EpochSecs(exp), Some("mailto:ops@example.com"))
    }

    /// The `t` and `k` parts of a header made by `sign`.
    fn parts(h: &str) -> (String, String) {
        let rest = h.strip_prefix("vapid t=").expect("vapid scheme");
        let (t, k) = rest.split_once(",k=").expect("k parameter");
        (t.to_owned(), k.to_owned())
    }

    #[test]
    fn sign_then_verify_vapid_form() {
        let h = header(ORIGIN, NOW.0 + 3600);
        let v = verify(&h, None, ORIGIN, NOW).expect("valid");
        assert_eq!(v.key, PublicKey::from(key(7).verifying_key()));
        assert_eq!(v.subject.as_deref(), Some("mailto:ops@example.com"));
    }

    #[test]
    fn vapid_form_variants() {
        let (t, k) = parts(&header(ORIGIN, NOW.0 + 3600));
        for h in [
            format!("vapid t={t}, k={k}"),
            format!("VAPID k={k},t={t}"),
            format!("Vapid  t=\"{t}\" , k=\"{k}=\""),
            format!("vapid t={t},k={k},extra=1"),
        ] {
            assert!(verify(&h, None, ORIGIN, NOW).is_ok(), "{h}");
        }
        assert_eq!(
            verify(&format!("vapid t={t},t={t},k={k}"), None, ORIGIN, NOW),
            Err(VapidError::MalformedHeader)
        );
        assert_eq!(
            verify(&format!("vapid t={t}"), None, ORIGIN, NOW),
            Err(VapidError::MissingKey)
        );
        assert_eq!(
            verify(&format!("vapid k={k}"), None, ORIGIN, NOW),
            Err(VapidError::MalformedHeader)
        );
    }

    #[test]
    fn sign_then_verify_webpush_form() {
        let (t, k) = parts(&header(ORIGIN, NOW.0 + 3600));
        let h = format!("WebPush {t}");
        for ck in [
            format!("p256ecdsa={k}"),
            format!("dh=BCVxsr7N_eNgVRqvHtD0;p256ecdsa={k}"),
            format!("dh=abc, p256ecdsa={k}"),
            format!("keyid=p256dh;dh=abc;P256ECDSA={k}="),
        ] {
            let v = verify(&h, Some(&ck), ORIGIN, NOW).expect(&ck);
            assert_eq!(v.key.to_base64(), k);
        }
        assert_eq!(verify(&h, None, ORIGIN, NOW), Err(VapidError::MissingKey));
        assert_eq!(
            verify(&h, Some("dh=abc"), ORIGIN, NOW),
            Err(VapidError::MissingKey)
        );
    }

    #[test]
    fn keys_parse_padded_and_standard_alphabet() {
        let k = PublicKey::from(key(9).verifying_key());
        let b64 = k.to_base64();
        assert_eq!(b64.len(), 87);
        assert_eq!(PublicKey::from_base64(&format!("{b64}=")), Ok(k.clone()));
        let standard = base64::engine::general_purpose::STANDARD.encode(k.as_bytes());
        assert_eq!(PublicKey::from_base64(&standard), Ok(k.clone()));
        assert_eq!(k.as_bytes().len(), 65);
        assert_eq!(k.as_bytes()[0], 4);
    }

    #[test]
    fn bad_keys_are_refused() {
        let k = PublicKey::from(key(9).verifying_key());
        let compressed = key(9).verifying_key().to_encoded_point(true);
        let mut off_curve = *<&[u8; 65]>::try_from(k.as_bytes()).expect("65 bytes");
        off_curve[64] ^= 1;
        for bad in [
            String::new(),
            "!!!".into(),
            URL_SAFE_NO_PAD.encode(compressed.as_bytes()),
            URL_SAFE_NO_PAD.encode(off_curve),
            URL_SAFE_NO_PAD.encode([0u8; 65]),
        ] {
            assert_eq!(
                PublicKey::from_base64(&bad),
                Err(VapidError::BadKey),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_key_is_a_bad_signature() {
        let (t, _) = parts(&header(ORIGIN, NOW.0 + 3600));
        let other = PublicKey::from(key(8).verifying_key()).to_base64();
        assert_eq!(
            verify(&format!("vapid t={t},k={other}"), None, ORIGIN, NOW),
            Err(VapidError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let (t, k) = parts(&header(ORIGIN, NOW.0 + 3600));
        let mut pieces: Vec<&str> = t.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":"{ORIGIN}","exp":{}}}"#, NOW.0 + 60));
        pieces[1] = &forged;
        let t = pieces.join(".");
        assert_eq!(
            verify(&format!("vapid t={t},k={k}"), None, ORIGIN, NOW),
            Err(VapidError::BadSignature)
        );
    }

    #[test]
    fn audience_with_and_without_port() {
        let exp = NOW.0 + 3600;
        assert!(verify(&header(ORIGIN, exp), None, ORIGIN, NOW).is_ok());
        assert!(verify(&header("http://127.0.0.1", exp), None, ORIGIN, NOW).is_ok());
        assert!(verify(&header("HTTP://127.0.0.1:8081", exp), None, ORIGIN, NOW).is_ok());
        for wrong in [
            "http://127.0.0.1:8082",
            "https://127.0.0.1:8081",
            "http://127.0.0.2",
            "http://127.0.0.1:8081/wpush",
            "",
        ] {
            assert_eq!(
                verify(&header(wrong, exp), None, ORIGIN, NOW),
                Err(VapidError::WrongAudience),
                "{wrong}"
            );
        }
        assert!(audience_matches("http://[::1]", "http://[::1]:8081"));
        assert!(!audience_matches("http://[::1", "http://[::1]:8081"));
        assert_eq!(strip_port("http://[::1]"), None);
        assert_eq!(strip_port("http://host"), None);
        assert_eq!(strip_port("http://host:80"), Some("http://host"));
        assert_eq!(strip_port("http://[::1]:80"), Some("http://[::1]"));
    }

    #[test]
    fn expiry_window() {
        assert_eq!(
            verify(&header(ORIGIN, NOW.0), None, ORIGIN, NOW),
            Err(VapidError::Expired)
        );
        assert_eq!(
            verify(&header(ORIGIN, NOW.0 - 10), None, ORIGIN, NOW),
            Err(VapidError::Expired)
        );
        assert!(verify(&header(ORIGIN, NOW.0 + 1), None, ORIGIN, NOW).is_ok());
        assert!(verify(&header(ORIGIN, NOW.0 + MAX_EXPIRY_SECS), None, ORIGIN, NOW).is_ok());
        assert_eq!(
            verify(
                &header(ORIGIN, NOW.0 + MAX_EXPIRY_SECS + 1),
                None,
                ORIGIN,
                NOW
            ),
            Err(VapidError::ExpiryTooFar)
        );
        assert_eq!(
            verify(
                &header(ORIGIN, i64::MAX),
                None,
                ORIGIN,
                EpochSecs(i64::MAX - 1)
            ),
            Ok(Vapid {
                key: PublicKey::from(key(7).verifying_key()),
                subject: Some("mailto:ops@example.com".into()),
                expires: EpochSecs(i64::MAX),
            })
        );
    }

    /// A JWT signed by `key(7)` with the given header and claims, as a full header value.
    fn custom(header: &str, claims: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature: Signature = key(7).sign(signed.as_bytes());
        let k = PublicKey::from(key(7).verifying_key()).to_base64();
        format!(
            "vapid t={signed}.{},k={k}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    #[test]
    fn algorithm_must_be_es256() {
        let claims = format!(r#"{{"aud":"{ORIGIN}","exp":{}}}"#, NOW.0 + 60);
        for h in [
            r#"{"typ":"JWT","alg":"HS256"}"#,
            r#"{"typ":"JWT","alg":"none"}"#,
            r#"{"typ":"JWT","alg":"es256"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            assert_eq!(
                verify(&custom(h, &claims), None, ORIGIN, NOW),
                Err(VapidError::WrongAlgorithm),
                "{h}"
            );
        }
        // `typ` is optional.
        assert!(verify(&custom(r#"{"alg":"ES256"}"#, &claims), None, ORIGIN, NOW).is_ok());
    }

    #[test]
    fn claims_are_typed() {
        let h = r#"{"alg":"ES256"}"#;
        let exp = NOW.0 + 60;
        let cases = [
            (format!(r#"{{"exp":{exp}}}"#), VapidError::BadClaim("aud")),
            (
                format!(r#"{{"aud":1,"exp":{exp}}}"#),
                VapidError::BadClaim("aud"),
            ),
            (
                format!(r#"{{"aud":"{ORIGIN}"}}"#),
                VapidError::BadClaim("exp"),
            ),
            (
                format!(r#"{{"aud":"{ORIGIN}","exp":"{exp}"}}"#),
                VapidError::BadClaim("exp"),
            ),
            (
                format!(r#"{{"aud":"{ORIGIN}","exp":{exp},"sub":5}}"#),
                VapidError::BadClaim("sub"),
            ),
            ("[1,2]".to_owned(), VapidError::BadJwt),
        ];
        for (claims, want) in cases {
            assert_eq!(
                verify(&custom(h, &claims), None, ORIGIN, NOW),
                Err(want),
                "{claims}"
            );
        }
        let fractional = format!(r#"{{"aud":"{ORIGIN}","exp":{exp}.75}}"#);
        assert_eq!(
            verify(&custom(h, &fractional), None, ORIGIN, NOW).map(|v| v.subject),
            Ok(None)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let (t, k) = parts(&header(ORIGIN, NOW.0 + 3600));
        let inputs = [
            String::new(),
            " ".into(),
            "vapid".into(),
            "vapid ".into(),
            "vapid t".into(),
            "vapid t=,k=".into(),
            "vapid ,,,,".into(),
            "Bearer abc".into(),
            "WebPush".into(),
            "WebPush a b".into(),
            format!("vapid t=a.b,k={k}"),
            format!("vapid t=a.b.c.d,k={k}"),
            format!("vapid t=..,k={k}"),
            format!("vapid t=é.ü.ß,k={k}"),
            format!("vapid t={t}x,k={k}"),
            format!("vapid t={}.AAAA,k={k}", &t[..t.rfind('.').unwrap_or(0)]),
            format!("vapid t={},k={k}", "a".repeat(MAX_JWT_LEN + 1)),
            format!("vapid t={t},k={}", &k[..10]),
            "\u{0}\u{1}vapid t=\u{7f}".into(),
        ];
        for input in &inputs {
            for ck in [None, Some(""), Some("p256ecdsa="), Some(";;,,=")] {
                assert!(verify(input, ck, ORIGIN, NOW).is_err(), "{input:?}");
                assert!(verify(input, ck, "", NOW).is_err());
                assert!(verify(input, ck, "http://[", EpochSecs(i64::MIN)).is_err());
            }
        }
        for origin in ["", ":", "://", "http://:", "x://[:1", "http://h:", "a:1"] {
            let _ = strip_port(origin);
            let _ = audience_matches(origin, origin);
        }
    }

    /// Made by Python's `cryptography` 48, an independent ES256 implementation: private key
    /// 32 bytes of `0x11`, claims `aud` = ORIGIN, `exp` = 1700003600, `sub`. Two signatures
    /// of the same token, one with a low and one with a high `s`, since ECDSA verifiers
    /// differ on the second and Python makes both.
    const PY_KEY: &str =
        "BAIX5hfwtkQ5KCePlpmeaaI6TywVK99tbN9m5bgCgtTtGUp968uXcS0t2jyoWqh2Wlb0X8dYWZZS8ol8ZTBuV5Q";
    const PY_JWT_LOW_S: &str = "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJFUzI1NiJ9.\
        eyJhdWQiOiAiaHR0cDovLzEyNy4wLjAuMTo4MDgxIiwgImV4cCI6IDE3MDAwMDM2MDAsICJzdWIiOiAibWFpbHRvOnRlc3RAZXhhbXBsZS5vcmcifQ.\
        FVRY4j5KODSyIJmNuWoT7ELlohBKcs7aCUU7wKGA2dAa13t1gLZoVZS09TnBPMnao6aMUHF2VqsXRw-mf1zFMA";
    const PY_JWT_HIGH_S: &str = "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJFUzI1NiJ9.\
        eyJhdWQiOiAiaHR0cDovLzEyNy4wLjAuMTo4MDgxIiwgImV4cCI6IDE3MDAwMDM2MDAsICJzdWIiOiAibWFpbHRvOnRlc3RAZXhhbXBsZS5vcmcifQ.\
        DDaIPbUWd4meunCFEZVn_LSpNLSVLPXj0WBjypicQfe7UlxYg0K0zb1zh6WQ1twoOyJh_Jg1UB7TKF3uXLw9yg";

    #[test]
    fn python_jwt_verifies() {
        let secret = SigningKey::from_slice(&[0x11; 32]).expect("valid scalar");
        assert_eq!(PublicKey::from(secret.verifying_key()).to_base64(), PY_KEY);
        for jwt in [PY_JWT_LOW_S, PY_JWT_HIGH_S] {
            let v = verify(&format!("vapid t={jwt}, k={PY_KEY}"), None, ORIGIN, NOW)
                .expect("python's JWT verifies");
            assert_eq!(v.subject.as_deref(), Some("mailto:test@example.org"));
            let crypto_key = format!("p256ecdsa={PY_KEY}");
            assert!(verify(&format!("WebPush {jwt}"), Some(&crypto_key), ORIGIN, NOW).is_ok());
            assert_eq!(
                verify(
                    &format!("vapid t={jwt},k={PY_KEY}"),
                    None,
                    ORIGIN,
                    EpochSecs(1_700_003_600)
                ),
                Err(VapidError::Expired)
            );
        }
    }
}
