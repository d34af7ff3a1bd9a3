//! The WebSocket session state machine (§2), without I/O: parses client frames and decides,
//! from what the connection has registered so far, whether a command may go ahead.

use common::crypto::{self, PublicKey, Secret};
use common::model::{Interface, UaId};
use common::validate::{Code, ProtocolError};
use serde_json::Value;

/// Longest watoken accepted.
const MAX_WATOKEN: usize = 256;
/// Most message ids in one `ack`.
const MAX_ACK_IDS: usize = 1000;

/// A client frame, parsed.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// The text frame `PING`.
    Ping,
    RegisterUa {
        uatoken: String,
        interface: Option<Interface>,
    },
    RegisterWa {
        uatoken: String,
        watoken: String,
        pbk: Option<PublicKeyArg>,
    },
    UnregisterWa {
        uatoken: String,
        watoken: String,
        pbk: Option<PublicKeyArg>,
    },
    Ack {
        message_ids: Vec<String>,
    },
}

/// A parsed `pbkbase64` (compared by its normalized PEM).
#[derive(Debug, Clone)]
pub struct PublicKeyArg(pub PublicKey);

impl PartialEq for PublicKeyArg {
    fn eq(&self, other: &Self) -> bool {
        self.0.pem() == other.0.pem()
    }
}

fn err(code: Code, reason: &'static str) -> ProtocolError {
    ProtocolError::new(code, reason)
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Command, ProtocolError> {
    if text.trim() == "PING" {
        return Ok(Command::Ping);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|_| err(Code::BadJson, "frame is not valid JSON"))?;
    let command = value
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| err(Code::MethodNotAllowed, "no command"))?;
    let empty = serde_json::Map::new();
    let data = match value.get("data") {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(err(Code::Generic, "data must be an object")),
    };
    let uatoken = || match data.get("uatoken") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(err(Code::NoUaToken, "no uatoken sent")),
    };
    let watoken = || match data.get("watoken") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_WATOKEN => Ok(s.clone()),
        _ => Err(err(Code::BadWaToken, "watoken missing or not valid")),
    };
    let pbk = || match data.get("pbkbase64") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => PublicKey::from_base64(s)
            .map(|k| Some(PublicKeyArg(k)))
            .map_err(|_| {
                err(
                    Code::BadPublicKey,
                    "pbkbase64 is not a valid RSA public key",
                )
            }),
        Some(_) => Err(err(Code::BadPublicKey, "pbkbase64 must be a string")),
    };
    match command {
        "register/ua" => Ok(Command::RegisterUa {
            uatoken: uatoken()?,
            interface: parse_interface(data.get("interface"))?,
        }),
        "register/wa" => Ok(Command::RegisterWa {
            uatoken: uatoken()?,
            watoken: watoken()?,
            pbk: pbk()?,
        }),
        "unregister/wa" => Ok(Command::UnregisterWa {
            uatoken: uatoken()?,
            watoken: watoken()?,
            pbk: pbk()?,
        }),
        "ack" => Ok(Command::Ack {
            message_ids: parse_ack(data)?,
        }),
        _ => Err(err(Code::MethodNotAllowed, "command not recognized")),
    }
}

/// True when a frame that failed to parse was a `register/ua` (its rejection closes).
pub fn names_register_ua(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v.get("command").and_then(Value::as_str) == Some("register/ua"))
}

fn parse_interface(value: Option<&Value>) -> Result<Option<Interface>, ProtocolError> {
    let bad = || {
        err(
            Code::BadField,
            "interface must be {\"ip\": \"...\", \"port\": N}",
        )
    };
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(bad()),
    };
    let ip = obj
        .get("ip")
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(bad)?;
    // The original clients send the port as a string.
    let port = match obj.get("port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p))
    .ok_or_else(bad)?;
    Ok(Some(Interface {
        ip,
        port: port as u16,
    }))
}

fn parse_ack(data: &serde_json::Map<String, Value>) -> Result<Vec<String>, ProtocolError> {
    let bad = || {
        err(
            Code::Generic,
            "ack needs messageId (string) or messageIds (array of strings)",
        )
    };
    let ids: Vec<String> = match (data.get("messageId"), data.get("messageIds")) {
        (Some(Value::String(id)), None) => vec![id.clone()],
        (None, Some(Value::Array(ids))) => ids
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if ids.len() > MAX_ACK_IDS {
        return Err(err(Code::TooBig, "too many message ids in one ack"));
    }
    Ok(ids)
}

/// What a connection has registered.
#[derive(Debug, Default)]
pub struct Session {
    ua: Option<(String, UaId)>,
}

impl Session {
    /// The UA registered on this connection, if any.
    pub fn ua(&self) -> Option<&UaId> {
        self.ua.as_ref().map(|(_, id)| id)
    }

    /// Checks a `register/ua`: the token must be genuine, and a connection holds one UA.
    /// Returns the UA's id; the caller calls [`Session::registered`] once it is stored.
    pub fn check_register_ua(&self, secret: &Secret, uatoken: &str) -> Result<UaId, ProtocolError> {
        let ua = crypto::verify_uatoken(secret, uatoken)
            .ok_or_else(|| err(Code::BadUaToken, "uatoken not valid; get a new one"))?;
        match &self.ua {
            Some((_, current)) if *current != ua => Err(err(
                Code::Generic,
                "this connection already holds another uatoken",
            )),
            _ => Ok(ua),
        }
    }

    pub fn registered(&mut self, uatoken: &str, ua: UaId) {
        self.ua = Some((uatoken.to_owned(), ua));
    }

    /// Checks that `uatoken` is the one registered on this connection (for WA commands).
    pub fn check_same_ua(&self, uatoken: &str) -> Result<UaId, ProtocolError> {
        match &self.ua {
            Some((token, ua)) if token == uatoken => Ok(ua.clone()),
            _ => Err(err(
                Code::NoUaRegistered,
                "no uatoken registered on this connection",
            )),
        }
    }

    /// Checks that some UA is registered (for acks).
    pub fn check_any_ua(&self) -> Result<UaId, ProtocolError> {
        self.ua.as_ref().map(|(_, ua)| ua.clone()).ok_or_else(|| {
            err(
                Code::NoUaRegistered,
                "no uatoken registered on this connection",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Code {
        parse(text).unwrap_err().code
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("PING").unwrap(), Command::Ping);
        assert_eq!(
            parse(r#"{"command":"register/ua","data":{"uatoken":"t","interface":{"ip":"10.0.0.1","port":"5000"}}}"#)
                .unwrap(),
            Command::RegisterUa {
                uatoken: "t".into(),
                interface: Some(Interface {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 5000
                })
            }
        );
        assert_eq!(
            parse(r#"{"command":"register/wa","data":{"uatoken":"t","watoken":"w"}}"#).unwrap(),
            Command::RegisterWa {
                uatoken: "t".into(),
                watoken: "w".into(),
                pbk: None
            }
        );
        assert!(matches!(
            parse(r#"{"command":"unregister/wa","data":{"uatoken":"t","watoken":"w"}}"#),
            Ok(Command::UnregisterWa { .. })
        ));
        assert_eq!(
            parse(r#"{"command":"ack","data":{"messageIds":["a","b"]}}"#).unwrap(),
            Command::Ack {
                message_ids: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            parse(r#"{"command":"ack","data":{"messageId":"a"}}"#).unwrap(),
            Command::Ack {
                message_ids: vec!["a".into()]
            }
        );
    }

    #[test]
    fn bad_frames_get_their_codes() {
        assert_eq!(code("{"), Code::BadJson);
        assert_eq!(code(r#"{"data":{}}"#), Code::MethodNotAllowed);
        assert_eq!(code(r#"{"command":"fly"}"#), Code::MethodNotAllowed);
        assert_eq!(
            code(r#"{"command":"register/ua","data":{}}"#),
            Code::NoUaToken
        );
        assert_eq!(
            code(
                r#"{"command":"register/ua","data":{"uatoken":"t","interface":{"ip":"x","port":1}}}"#
            ),
            Code::BadField
        );
        assert_eq!(
            code(
                r#"{"command":"register/ua","data":{"uatoken":"t","interface":{"ip":"1.2.3.4","port":70000}}}"#
            ),
            Code::BadField
        );
        assert_eq!(
            code(r#"{"command":"register/wa","data":{"uatoken":"t"}}"#),
            Code::BadWaToken
        );
        assert_eq!(
            code(
                r#"{"command":"register/wa","data":{"uatoken":"t","watoken":"w","pbkbase64":"nope"}}"#
            ),
            Code::BadPublicKey
        );
        assert_eq!(
            code(r#"{"command":"ack","data":{"messageIds":[1]}}"#),
            Code::Generic
        );
        assert_eq!(code(r#"{"command":"ack","data":{}}"#), Code::Generic);
    }

    #[test]
    fn a_bad_register_ua_is_recognised() {
        assert!(names_register_ua(r#"{"command":"register/ua","data":{}}"#));
        assert!(!names_register_ua(
            r#"{"command":"register/wa","data":{"x":"register/ua"}}"#
        ));
        assert!(!names_register_ua("{register/ua"));
    }

    #[test]
    fn wa_commands_need_the_registered_ua() {
        let secret = Secret::new("0123456789abcdef");
        let token = crypto::new_uatoken(&secret);
        let mut session = Session::default();
        assert_eq!(
            session.check_same_ua(&token).unwrap_err().code,
            Code::NoUaRegistered
        );
        assert_eq!(
            session.check_any_ua().unwrap_err().code,
            Code::NoUaRegistered
        );

        let ua = session.check_register_ua(&secret, &token).unwrap();
        session.registered(&token, ua.clone());
        assert_eq!(session.check_same_ua(&token).unwrap(), ua);
        assert_eq!(session.ua(), Some(&ua));

        let other = crypto::new_uatoken(&secret);
        assert_eq!(
            session.check_same_ua(&other).unwrap_err().code,
            Code::NoUaRegistered
        );
        assert_eq!(
            session.check_register_ua(&secret, &other).unwrap_err().code,
            Code::Generic
        );
        // The same token again is fine (a client may re-register).
        assert!(session.check_register_ua(&secret, &token).is_ok());
    }

    #[test]
    fn forged_tokens_are_refused() {
        let secret = Secret::new("0123456789abcdef");
        let forged = crypto::new_uatoken(&Secret::new("another secret!!"));
        let session = Session::default();
        assert_eq!(
            session
                .check_register_ua(&secret, &forged)
                .unwrap_err()
                .code,
            Code::BadUaToken
        );
    }
}
