//! Web Push (WEBPUSH.md): the identities the server hands out, each authenticated with the
//! cluster secret so that it is checked without a look-up, and the rules of a push request's
//! headers. Pure.
//!
//! A subscription is one UA's channel. It is kept as an app registration of that one UA, so
//! the Telefónica pipeline (store, broker, monitor, front-ends) carries Web Push messages
//! unchanged: its appToken ([`Subscription::app_token`]) is derived from the UA and the
//! channel, and its endpoint token ([`Subscription::endpoint_token`]) seals the UA, the
//! channel and a hash of the key it was registered with.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::crypto::{self, Secret};
use crate::model::{AppToken, MessageId, UaId};
use crate::notification::ContentEncoding;
use crate::validate::MAX_TTL;

/// Largest body accepted: an `aes128gcm` record of 3,993 bytes of plaintext.
pub const MAX_BODY: usize = 4096;
/// Longest `Topic`, in base64url characters.
pub const MAX_TOPIC: usize = 32;
/// Longest uaid a UA may present; longer ones are never genuine.
pub const MAX_UAID: usize = 128;

const TAG: usize = crypto::TOKEN_TAG;
/// What an endpoint token seals: its version, the UA, the channel and the key's hash.
const SEALED: usize = 1 + 16 + 16 + 16;

/// A new uaid: a bearer token like a uatoken, of its own kind so neither passes for the other.
pub fn new_uaid(secret: &Secret) -> String {
    crypto::new_bearer(secret, b"uaid\0")
}

/// Checks a uaid without a look-up; returns the UA's internal id when the server issued it.
pub fn verify_uaid(secret: &Secret, uaid: &str) -> Option<UaId> {
    crypto::verify_bearer(secret, b"uaid\0", uaid).then(|| crypto::ua_id(uaid))
}

/// A `channelID`: a UUID chosen by the UA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelId([u8; 16]);

impl ChannelId {
    /// Parses a UUID, hyphenated or not, in either case.
    pub fn parse(s: &str) -> Option<ChannelId> {
        let hex: String = match s.len() {
            36 => {
                let dashes = [8, 13, 18, 23];
                let ok = s
                    .char_indices()
                    .all(|(i, c)| (c == '-') == dashes.contains(&i));
                if !ok {
                    return None;
                }
                s.chars().filter(|c| *c != '-').collect()
            }
            32 => s.to_owned(),
            _ => return None,
        };
        let mut raw = [0u8; 16];
        hex::decode_to_slice(hex, &mut raw).ok()?;
        Some(ChannelId(raw))
    }
}

/// Hyphenated and lower case, as Firefox writes it.
impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

/// Which endpoint a subscription was given: `v2` when the UA registered an
/// applicationServerKey, and then only messages signed with that key are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointVersion {
    V1,
    V2,
}

impl EndpointVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointVersion::V1 => "v1",
            EndpointVersion::V2 => "v2",
        }
    }
}

/// One UA's channel, and the hash of the applicationServerKey it was registered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    ua: [u8; 16],
    pub channel: ChannelId,
    key_hash: Option<[u8; 16]>,
}

impl Subscription {
    /// The subscription of `ua`'s `channel`, bound to `key` (the raw uncompressed point) if
    /// the UA gave one. `None` if `ua` is not an id the server derives.
    pub fn new(ua: &UaId, channel: ChannelId, key: Option<&[u8]>) -> Option<Subscription> {
        let mut raw = [0u8; 16];
        hex::decode_to_slice(ua.as_str(), &mut raw).ok()?;
        Some(Subscription {
            ua: raw,
            channel,
            key_hash: key.map(key_hash),
        })
    }

    pub fn ua(&self) -> UaId {
        UaId::new(hex::encode(self.ua))
    }

    pub fn version(&self) -> EndpointVersion {
        match self.key_hash {
            Some(_) => EndpointVersion::V2,
            None => EndpointVersion::V1,
        }
    }

    /// Whether a VAPID key is the one the subscription is bound to.
    pub fn is_bound_to(&self, key: &[u8]) -> bool {
        self.key_hash
            .is_some_and(|bound| bool::from(bound.ct_eq(&key_hash(key))))
    }

    /// The appToken the subscription is stored under: the UA's registration for it. The key
    /// is left out, so that `unregister`, which names only the channel, finds it.
    pub fn app_token(&self, secret: &Secret) -> AppToken {
        let mut mac = secret.mac(b"subscription\0");
        mac.update(&self.ua);
        mac.update(&self.channel.0);
        AppToken::new(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The last segment of the push endpoint. The same subscription always gets the same
    /// token (so registering again returns the same endpoint), and nothing in it can be read
    /// or changed without the secret: a deterministic authenticated encryption (SIV) whose
    /// tag, an HMAC of the content, is also the keystream's seed.
    pub fn endpoint_token(&self, secret: &Secret) -> String {
        let mut sealed = self.plaintext();
        let tag = seal_tag(secret, &sealed);
        xor_keystream(secret, &tag, &mut sealed);
        let mut raw = Vec::with_capacity(TAG + SEALED);
        raw.extend_from_slice(&tag);
        raw.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Reads an endpoint token; `None` unless the server made it.
    pub fn open(secret: &Secret, token: &str) -> Option<Subscription> {
        if token.len() > 2 * (TAG + SEALED) {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() != TAG + SEALED {
            return None;
        }
        let (tag, sealed) = raw.split_at(TAG);
        let mut plain = [0u8; SEALED];
        plain.copy_from_slice(sealed);
        xor_keystream(secret, tag, &mut plain);
        if !bool::from(seal_tag(secret, &plain).ct_eq(tag)) {
            return None;
        }
        let part = |from: usize| {
            let mut out = [0u8; 16];
            out.copy_from_slice(&plain[from..from + 16]);
            out
        };
        let key_hash = match plain[0] {
            1 => None,
            2 => Some(part(33)),
            _ => return None,
        };
        Some(Subscription {
            ua: part(1),
            channel: ChannelId(part(17)),
            key_hash,
        })
    }

    /// `{base}/wpush/{v1|v2}/{token}`.
    pub fn endpoint(&self, secret: &Secret, base: &str) -> String {
        format!(
            "{}/wpush/{}/{}",
            base.trim_end_matches('/'),
            self.version().as_str(),
            self.endpoint_token(secret)
        )
    }

    fn plaintext(&self) -> [u8; SEALED] {
        let mut out = [0u8; SEALED];
        out[0] = match self.key_hash {
            None => 1,
            Some(_) => 2,
        };
        out[1..17].copy_from_slice(&self.ua);
        out[17..33].copy_from_slice(&self.channel.0);
        if let Some(hash) = self.key_hash {
            out[33..].copy_from_slice(&hash);
        }
        out
    }
}

fn key_hash(key: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn seal_tag(secret: &Secret, plain: &[u8]) -> [u8; TAG] {
    crypto::token_tag(secret, b"endpoint\0", plain)
}

/// XORs `data` with a keystream drawn from the tag: HMAC blocks over (tag, counter).
fn xor_keystream(secret: &Secret, tag: &[u8], data: &mut [u8]) {
    for (counter, chunk) in data.chunks_mut(32).enumerate() {
        let mut mac = secret.mac(b"endpoint-stream\0");
        mac.update(tag);
        mac.update(&[counter as u8]);
        let block = mac.finalize().into_bytes();
        for (byte, k) in chunk.iter_mut().zip(block.iter()) {
            *byte ^= k;
        }
    }
}

/// The capability in a message's `Location`: whoever holds it may read the message's status
/// or withdraw it. It carries the message id, and whether the message was stored (`TTL: 0`
/// ones never are), with a tag only the secret can make, so it can't be derived from the
/// `version` the UA sees.
pub fn location_token(secret: &Secret, message_id: &MessageId, stored: bool) -> String {
    let mut raw = Vec::with_capacity(1 + message_id.as_str().len() + TAG);
    raw.push(u8::from(stored));
    raw.extend_from_slice(message_id.as_str().as_bytes());
    let tag = location_tag(secret, &raw);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The message a location names and whether it was stored, if the server made it.
pub fn open_location(secret: &Secret, token: &str) -> Option<(MessageId, bool)> {
    if token.len() > 256 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let split = raw.len().checked_sub(TAG).filter(|s| *s > 1)?;
    let (content, tag) = raw.split_at(split);
    if !bool::from(location_tag(secret, content).ct_eq(tag)) {
        return None;
    }
    let stored = match content[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let id = String::from_utf8(content[1..].to_vec()).ok()?;
    Some((MessageId::new(id), stored))
}

fn location_tag(secret: &Secret, content: &[u8]) -> [u8; TAG] {
    crypto::token_tag(secret, b"location\0", content)
}

/// Why a push request is refused. Each kind has its `errno` (the JSON error body's); the
/// HTTP status is the edge's to choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushErrorKind {
    /// A required header is missing (`TTL`, or `Content-Encoding` with a body).
    MissingHeader,
    /// `TTL` is not a non-negative integer.
    BadTtl,
    /// `Topic` is too long or not base64url.
    BadTopic,
    /// `Urgency` is not one of the four values.
    BadUrgency,
    /// An encoding other than `aes128gcm` and `aesgcm`, or bad `aesgcm` headers.
    BadEncoding,
    /// The `aesgcm` headers are missing.
    MissingCryptoKeys,
    /// VAPID missing where required, or not valid.
    Unauthorized,
    /// No such endpoint (or message).
    NotFound,
    /// The subscription was removed.
    Gone,
    /// The body is over [`MAX_BODY`].
    TooBig,
    /// Over the rate limit for the subscription.
    RateLimited,
    /// The subscription's app has as many pending messages as the server allows.
    QuotaExceeded,
    /// The store or broker can't take the message now.
    Unavailable,
}

impl PushErrorKind {
    /// The `errno` of the error body, in autopush's numbering.
    pub fn errno(self) -> u16 {
        match self {
            PushErrorKind::MissingHeader => 111,
            PushErrorKind::BadTtl => 112,
            PushErrorKind::BadTopic => 113,
            PushErrorKind::BadUrgency => 114,
            PushErrorKind::BadEncoding => 110,
            PushErrorKind::MissingCryptoKeys => 101,
            PushErrorKind::Unauthorized => 109,
            PushErrorKind::NotFound => 102,
            PushErrorKind::Gone => 103,
            PushErrorKind::TooBig => 104,
            PushErrorKind::RateLimited
            | PushErrorKind::QuotaExceeded
            | PushErrorKind::Unavailable => 201,
        }
    }
}

/// A refused push request: its kind and what to tell the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({kind:?})")]
pub struct PushError {
    pub kind: PushErrorKind,
    pub message: Cow<'static, str>,
}

impl PushError {
    pub fn new(kind: PushErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        PushError {
            kind,
            message: message.into(),
        }
    }
}

/// The headers of a push request that shape the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushHeaders {
    /// As applied: lowered to 30 days.
    pub ttl: u32,
    pub priority: u8,
    pub topic: Option<String>,
    pub encoding: Option<ContentEncoding>,
}

/// The raw header values of a push request, as far as [`PushHeaders`] needs them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawHeaders<'a> {
    pub ttl: Option<&'a str>,
    pub urgency: Option<&'a str>,
    pub topic: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub encryption: Option<&'a str>,
    pub crypto_key: Option<&'a str>,
}

impl PushHeaders {
    /// Checks the headers of a request whose body has `body_len` bytes.
    pub fn parse(raw: RawHeaders<'_>, body_len: usize) -> Result<PushHeaders, PushError> {
        let ttl = raw.ttl.ok_or_else(|| {
            PushError::new(PushErrorKind::MissingHeader, "the TTL header is required")
        })?;
        let ttl: u64 = ttl.trim().parse().map_err(|_| {
            PushError::new(
                PushErrorKind::BadTtl,
                "TTL must be a whole number of seconds",
            )
        })?;
        let ttl = u32::try_from(ttl).unwrap_or(MAX_TTL).min(MAX_TTL);
        let priority = match raw.urgency.map(str::trim) {
            None | Some("normal") => 2,
            Some("very-low") => 4,
            Some("low") => 3,
            Some("high") => 1,
            Some(_) => {
                return Err(PushError::new(
                    PushErrorKind::BadUrgency,
                    "Urgency must be very-low, low, normal or high",
                ))
            }
        };
        let topic = match raw.topic {
            None => None,
            Some(t) if is_topic(t) => Some(t.to_owned()),
            Some(_) => {
                return Err(PushError::new(
                    PushErrorKind::BadTopic,
                    "Topic must be at most 32 base64url characters",
                ))
            }
        };
        let encoding = if body_len == 0 {
            None
        } else {
            Some(parse_encoding(raw)?)
        };
        Ok(PushHeaders {
            ttl,
            priority,
            topic,
            encoding,
        })
    }
}

fn is_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_encoding(raw: RawHeaders<'_>) -> Result<ContentEncoding, PushError> {
    let encoding = raw.content_encoding.ok_or_else(|| {
        PushError::new(
            PushErrorKind::MissingHeader,
            "a body needs a Content-Encoding",
        )
    })?;
    match encoding.trim().to_ascii_lowercase().as_str() {
        "aes128gcm" => Ok(ContentEncoding::Aes128gcm),
        "aesgcm" => {
            let (Some(encryption), Some(crypto_key)) = (raw.encryption, raw.crypto_key) else {
                return Err(PushError::new(
                    PushErrorKind::MissingCryptoKeys,
                    "aesgcm needs the Encryption and Crypto-Key headers",
                ));
            };
            if !has_param(encryption, "salt") || !has_param(crypto_key, "dh") {
                return Err(PushError::new(
                    PushErrorKind::BadEncoding,
                    "aesgcm needs salt= in Encryption and dh= in Crypto-Key",
                ));
            }
            Ok(ContentEncoding::Aesgcm {
                encryption: encryption.trim().to_owned(),
                crypto_key: crypto_key.trim().to_owned(),
            })
        }
        _ => Err(PushError::new(
            PushErrorKind::BadEncoding,
            "Content-Encoding must be aes128gcm or aesgcm",
        )),
    }
}

/// Whether a header of `;`- or `,`-separated `name=value` parameters has `name`.
fn has_param(header: &str, name: &str) -> bool {
    header
        .split([';', ','])
        .filter_map(|p| p.split_once('='))
        .any(|(n, v)| n.trim().eq_ignore_ascii_case(name) && !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef")
    }

    const CHANNEL: &str = "5d0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5f";

    fn subscription(key: Option<&[u8]>) -> Subscription {
        let ua = crypto::ua_id("some uaid");
        Subscription::new(&ua, ChannelId::parse(CHANNEL).unwrap(), key).unwrap()
    }

    #[test]
    fn uaids_are_their_own_kind_of_token() {
        let uaid = new_uaid(&secret());
        assert_eq!(verify_uaid(&secret(), &uaid), Some(crypto::ua_id(&uaid)));
        assert_eq!(crypto::verify_uatoken(&secret(), &uaid), None);
        let uatoken = crypto::new_uatoken(&secret());
        assert_eq!(verify_uaid(&secret(), &uatoken), None);
        assert_eq!(verify_uaid(&Secret::new("other"), &uaid), None);
        assert_eq!(verify_uaid(&secret(), "forged"), None);
    }

    #[test]
    fn channel_ids_parse_as_uuids() {
        let id = ChannelId::parse(CHANNEL).unwrap();
        assert_eq!(id.to_string(), CHANNEL);
        assert_eq!(ChannelId::parse(&CHANNEL.to_uppercase()), Some(id));
        assert_eq!(ChannelId::parse(&CHANNEL.replace('-', "")), Some(id));
        for bad in [
            "",
            "x",
            "5d0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5",
            "5d0b5a1e8a4c-4a43-9f3e-3a1b2c3d4e5f-",
        ] {
            assert_eq!(ChannelId::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ChannelId::parse("zd0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5f"),
            None
        );
    }

    #[test]
    fn endpoint_tokens_seal_the_subscription() {
        let key = [4u8; 65];
        for sub in [subscription(None), subscription(Some(&key))] {
            let token = sub.endpoint_token(&secret());
            assert_eq!(token, sub.endpoint_token(&secret()), "deterministic");
            assert_eq!(Subscription::open(&secret(), &token), Some(sub.clone()));
            assert_eq!(Subscription::open(&Secret::new("other"), &token), None);
            let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
            for i in [0, TAG, raw.len() - 1] {
                raw[i] ^= 1;
                let tampered = URL_SAFE_NO_PAD.encode(&raw);
                assert_eq!(Subscription::open(&secret(), &tampered), None, "byte {i}");
                raw[i] ^= 1;
            }
            assert!(
                !token.contains(&hex::encode(sub.ua)),
                "the UA is not readable"
            );
        }
        let v2 = subscription(Some(&key));
        assert_eq!(v2.version(), EndpointVersion::V2);
        assert!(v2.is_bound_to(&key));
        assert!(!v2.is_bound_to(&[5u8; 65]));
        assert!(!subscription(None).is_bound_to(&key));
        assert_eq!(
            v2.app_token(&secret()),
            subscription(None).app_token(&secret()),
            "stored under the UA and channel alone"
        );
        assert!(crypto::looks_like_app_token(
            v2.app_token(&secret()).as_str()
        ));
        assert!(v2
            .endpoint(&secret(), "http://h:1/")
            .starts_with("http://h:1/wpush/v2/"));
        assert_eq!(v2.ua(), crypto::ua_id("some uaid"));
        for bad in ["", "!!", "AAAA"] {
            assert_eq!(Subscription::open(&secret(), bad), None);
        }
    }

    #[test]
    fn locations_name_their_message_only_with_the_secret() {
        let id = MessageId::new("0190a1b2c3d4e5f60718293a4b5c6d7e");
        let token = location_token(&secret(), &id, true);
        assert_eq!(open_location(&secret(), &token), Some((id.clone(), true)));
        let live_only = location_token(&secret(), &id, false);
        assert_eq!(
            open_location(&secret(), &live_only),
            Some((id.clone(), false))
        );
        assert_eq!(open_location(&Secret::new("other"), &token), None);
        assert!(!token.contains(id.as_str()));
        assert_eq!(open_location(&secret(), "short"), None);
        assert_eq!(open_location(&secret(), ""), None);
    }

    fn parse(raw: RawHeaders<'_>, len: usize) -> Result<PushHeaders, PushErrorKind> {
        PushHeaders::parse(raw, len).map_err(|e| e.kind)
    }

    #[test]
    fn headers() {
        let base = RawHeaders {
            ttl: Some("60"),
            content_encoding: Some("aes128gcm"),
            ..RawHeaders::default()
        };
        let ok = parse(base, 10).unwrap();
        assert_eq!((ok.ttl, ok.priority, ok.topic), (60, 2, None));
        assert_eq!(ok.encoding, Some(ContentEncoding::Aes128gcm));
        let no_ttl = RawHeaders { ttl: None, ..base };
        assert_eq!(parse(no_ttl, 10), Err(PushErrorKind::MissingHeader));
        assert_eq!(
            PushErrorKind::MissingHeader.errno(),
            111,
            "a missing TTL is errno 111"
        );
        for bad in ["-1", "x", "1.5", ""] {
            let r = RawHeaders {
                ttl: Some(bad),
                ..base
            };
            assert_eq!(parse(r, 10), Err(PushErrorKind::BadTtl), "{bad}");
        }
        let long = RawHeaders {
            ttl: Some("99999999999"),
            ..base
        };
        assert_eq!(parse(long, 10).unwrap().ttl, MAX_TTL);
        for (urgency, priority) in [("very-low", 4), ("low", 3), ("normal", 2), ("high", 1)] {
            let r = RawHeaders {
                urgency: Some(urgency),
                ..base
            };
            assert_eq!(parse(r, 10).unwrap().priority, priority);
        }
        let r = RawHeaders {
            urgency: Some("urgent"),
            ..base
        };
        assert_eq!(parse(r, 10), Err(PushErrorKind::BadUrgency));
        let r = RawHeaders {
            topic: Some("abc_-1"),
            ..base
        };
        assert_eq!(parse(r, 10).unwrap().topic.as_deref(), Some("abc_-1"));
        for bad in ["", "a b", "a=", &"a".repeat(33)] {
            let r = RawHeaders {
                topic: Some(bad),
                ..base
            };
            assert_eq!(parse(r, 10), Err(PushErrorKind::BadTopic), "{bad}");
        }
        let none = RawHeaders {
            content_encoding: None,
            ..base
        };
        assert_eq!(parse(none, 10), Err(PushErrorKind::MissingHeader));
        assert_eq!(
            parse(none, 0).unwrap().encoding,
            None,
            "no body, no encoding"
        );
        let other = RawHeaders {
            content_encoding: Some("gzip"),
            ..base
        };
        assert_eq!(parse(other, 10), Err(PushErrorKind::BadEncoding));
        let aesgcm = RawHeaders {
            content_encoding: Some("aesgcm"),
            ..base
        };
        assert_eq!(parse(aesgcm, 10), Err(PushErrorKind::MissingCryptoKeys));
        let full = RawHeaders {
            encryption: Some("salt=abc"),
            crypto_key: Some("dh=def;p256ecdsa=ghi"),
            ..aesgcm
        };
        assert_eq!(
            parse(full, 10).unwrap().encoding,
            Some(ContentEncoding::Aesgcm {
                encryption: "salt=abc".into(),
                crypto_key: "dh=def;p256ecdsa=ghi".into()
            })
        );
        let no_dh = RawHeaders {
            crypto_key: Some("p256ecdsa=ghi"),
            ..full
        };
        assert_eq!(parse(no_dh, 10), Err(PushErrorKind::BadEncoding));
    }
}
