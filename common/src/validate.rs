//! Protocol error codes (§6) and the validation of notify bodies (§3). Pure.

use serde_json::Value;
use std::borrow::Cow;

use crate::model::EpochSecs;

/// Largest `ttl` accepted: 30 days, also the default.
pub const MAX_TTL: u32 = 2_592_000;
/// Longest AS id accepted, in characters.
pub const MAX_ID_CHARS: usize = 32;
/// Default limit of `message`, in bytes of UTF-8.
pub const DEFAULT_MAX_MESSAGE: usize = 4096;
/// Default of how far in the future a `timestamp` may be: the AS's clock may run ahead.
pub const DEFAULT_MAX_CLOCK_SKEW: i64 = 300;

/// What a notify body is checked against besides the protocol's own rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyLimits {
    /// Largest `message`, in bytes of UTF-8.
    pub max_message: usize,
    /// Most seconds a `timestamp` may be ahead of the server's clock. With the TTL cap, no
    /// notification outlives `now + MAX_TTL + max_clock_skew`.
    pub max_clock_skew: i64,
}

/// The error codes of §6. Each HTTP edge maps them to a status; this crate knows none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Generic = 400,
    NotFound = 404,
    MethodNotAllowed = 405,
    TooBig = 413,
    RateLimited = 429,
    BadJson = 450,
    BadMessageType = 452,
    NotSigned = 453,
    BadId = 454,
    BadSignature = 455,
    BadUaToken = 456,
    BadWaToken = 457,
    BadPublicKey = 458,
    NoUaRegistered = 459,
    NoUaToken = 462,
    Binary = 463,
    BadField = 464,
    QuotaExceeded = 465,
    Unavailable = 503,
}

impl Code {
    pub fn number(self) -> u16 {
        self as u16
    }
}

/// An error a client is told about: a code of §6 and a readable reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code:?})")]
pub struct ProtocolError {
    pub code: Code,
    pub reason: Cow<'static, str>,
}

impl ProtocolError {
    pub fn new(code: Code, reason: impl Into<Cow<'static, str>>) -> Self {
        ProtocolError {
            code,
            reason: reason.into(),
        }
    }
}

fn err(code: Code, reason: &'static str) -> ProtocolError {
    ProtocolError::new(code, reason)
}

/// A notify body that passed validation; the signature is checked later, against the WA's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyRequest {
    pub id: String,
    pub message: String,
    pub signature: Option<String>,
    pub ttl: u32,
    pub timestamp: EpochSecs,
    pub priority: u8,
}

impl NotifyRequest {
    /// When the notification stops being deliverable.
    pub fn expires_at(&self) -> EpochSecs {
        self.timestamp.plus(i64::from(self.ttl))
    }
}

/// Validates a `POST /notify` body against §3, with `now` in epoch seconds.
pub fn validate_notify(
    body: &[u8],
    limits: NotifyLimits,
    now: EpochSecs,
) -> Result<NotifyRequest, ProtocolError> {
    let max_message = limits.max_message;
    let value: Value =
        serde_json::from_slice(body).map_err(|_| err(Code::BadJson, "body is not valid JSON"))?;
    let Value::Object(obj) = value else {
        return Err(err(Code::BadJson, "body is not a JSON object"));
    };

    match obj.get("messageType") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "notification" => {}
        Some(_) => {
            return Err(err(
                Code::BadMessageType,
                "messageType must be \"notification\"",
            ))
        }
    }

    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(err(Code::BadId, "id is required, a string or a number")),
    };
    if id.is_empty() {
        return Err(err(Code::BadId, "id is empty"));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(err(Code::TooBig, "id is longer than 32 characters"));
    }

    let message = match obj.get("message") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(err(Code::BadField, "message is required, a string")),
    };
    if message.len() > max_message {
        return Err(ProtocolError::new(
            Code::TooBig,
            format!("message is longer than {max_message} bytes"),
        ));
    }

    let signature = match obj.get("signature") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(err(Code::BadSignature, "signature must be a hex string")),
    };

    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => MAX_TTL,
        Some(v) => match integer(v) {
            Some(t) if (0..=i64::from(MAX_TTL)).contains(&t) => t as u32,
            _ => {
                return Err(err(
                    Code::BadField,
                    "ttl must be an integer from 0 to 2592000",
                ))
            }
        },
    };

    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => now,
        Some(v) => match integer(v) {
            Some(t) if t >= 0 => EpochSecs(t),
            _ => {
                return Err(err(
                    Code::BadField,
                    "timestamp must be epoch seconds, a number or a numeric string",
                ))
            }
        },
    };
    if timestamp > now.plus(limits.max_clock_skew) {
        return Err(ProtocolError::new(
            Code::BadField,
            format!(
                "timestamp is more than {} s ahead of the server's clock",
                limits.max_clock_skew
            ),
        ));
    }

    let priority = match obj.get("priority") {
        None | Some(Value::Null) => 4,
        Some(v) => match integer(v) {
            Some(p) if (1..=4).contains(&p) => p as u8,
            _ => {
                return Err(err(
                    Code::BadField,
                    "priority must be an integer from 1 to 4",
                ))
            }
        },
    };

    let request = NotifyRequest {
        id,
        message,
        signature,
        ttl,
        timestamp,
        priority,
    };
    if ttl > 0 && request.expires_at() <= now {
        return Err(err(Code::BadField, "the notification has already expired"));
    }
    Ok(request)
}

/// An integer given as a JSON number (without a fraction) or a numeric string.
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochSecs = EpochSecs(1_700_000_000);

    fn check(body: &str) -> Result<NotifyRequest, Code> {
        let limits = NotifyLimits {
            max_message: 16,
            max_clock_skew: 300,
        };
        validate_notify(body.as_bytes(), limits, NOW).map_err(|e| e.code)
    }

    #[test]
    fn minimal_body_gets_defaults() {
        let r = check(r#"{"id": "a", "message": "hi"}"#).unwrap();
        assert_eq!(r.ttl, MAX_TTL);
        assert_eq!(r.timestamp, NOW);
        assert_eq!(r.priority, 4);
        assert_eq!(r.signature, None);
        assert_eq!(r.expires_at(), NOW.plus(i64::from(MAX_TTL)));
    }

    #[test]
    fn full_body_is_read() {
        let r = check(&format!(
            r#"{{"id": 17, "message": "m", "signature": "ab", "ttl": 0, "timestamp": "{NOW}",
                 "priority": 1, "messageType": "notification"}}"#
        ))
        .unwrap();
        assert_eq!(r.id, "17");
        assert_eq!(r.ttl, 0);
        assert_eq!(r.priority, 1);
        assert_eq!(r.signature.as_deref(), Some("ab"));
    }

    #[test]
    fn every_error_code() {
        assert_eq!(check("nope"), Err(Code::BadJson));
        assert_eq!(check("[1]"), Err(Code::BadJson));
        assert_eq!(
            check(r#"{"id": "a", "message": "m", "messageType": "x"}"#),
            Err(Code::BadMessageType)
        );
        assert_eq!(check(r#"{"message": "m"}"#), Err(Code::BadId));
        assert_eq!(check(r#"{"id": "", "message": "m"}"#), Err(Code::BadId));
        assert_eq!(check(r#"{"id": [1], "message": "m"}"#), Err(Code::BadId));
        let long_id = "x".repeat(33);
        assert_eq!(
            check(&format!(r#"{{"id": "{long_id}", "message": "m"}}"#)),
            Err(Code::TooBig)
        );
        assert_eq!(check(r#"{"id": "a"}"#), Err(Code::BadField));
        assert_eq!(check(r#"{"id": "a", "message": 5}"#), Err(Code::BadField));
        assert_eq!(
            check(r#"{"id": "a", "message": "0123456789abcdefg"}"#),
            Err(Code::TooBig)
        );
        for bad in [
            r#""ttl": -1"#,
            r#""ttl": 2592001"#,
            r#""ttl": "x""#,
            r#""ttl": 1.5"#,
            r#""priority": 0"#,
            r#""priority": 5"#,
            r#""timestamp": "yesterday""#,
            r#""timestamp": -3"#,
            r#""timestamp": 1, "ttl": 10"#,
        ] {
            assert_eq!(
                check(&format!(r#"{{"id": "a", "message": "m", {bad}}}"#)),
                Err(Code::BadField),
                "{bad}"
            );
        }
        assert_eq!(
            check(r#"{"id": "a", "message": "m", "signature": 5}"#),
            Err(Code::BadSignature)
        );
    }

    #[test]
    fn message_limit_counts_bytes_not_chars() {
        // Eight two-byte characters are exactly 16 bytes: accepted; nine are not.
        assert!(check(r#"{"id": "a", "message": "éééééééé"}"#).is_ok());
        assert_eq!(
            check(r#"{"id": "a", "message": "ééééééééé"}"#),
            Err(Code::TooBig)
        );
    }

    #[test]
    fn a_timestamp_past_the_clock_skew_is_refused() {
        let at = |t: i64| format!(r#"{{"id": "a", "message": "m", "ttl": 1, "timestamp": {t}}}"#);
        assert!(check(&at(NOW.0 + 300)).is_ok(), "within the skew");
        assert_eq!(check(&at(NOW.0 + 301)), Err(Code::BadField));
        assert_eq!(check(&at(i64::MAX)), Err(Code::BadField));
        assert_eq!(
            check(&format!(
                r#"{{"id": "a", "message": "m", "timestamp": "{}"}}"#,
                i64::MAX
            )),
            Err(Code::BadField)
        );
    }

    #[test]
    fn ttl_zero_is_never_expired() {
        assert!(check(r#"{"id": "a", "message": "m", "ttl": 0, "timestamp": 1}"#).is_ok());
    }
}
