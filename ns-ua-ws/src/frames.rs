//! Client frames (§2), typed: `{"command": "...", "data": {...}}` read by serde into one
//! struct per command, then checked field by field, because the protocol gives a missing
//! field and a malformed one their own codes.

use common::crypto::PublicKey;
use common::model::{Interface, MessageId};
use common::validate::{Code, ProtocolError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Longest watoken accepted.
const MAX_WATOKEN: usize = 256;
/// Most message ids in one `ack`.
pub(crate) const MAX_ACK_IDS: usize = 1000;

/// A client frame, parsed and checked.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    /// The text frame `PING`.
    Ping,
    RegisterUa {
        uatoken: String,
        interface: Option<Interface>,
        /// `countEvents`: send `{"pending": N}` whenever the UA's count changes.
        count_events: bool,
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
        message_ids: Vec<MessageId>,
    },
    /// How many notifications the UA is owed.
    Count,
}

/// A parsed `pbkbase64` (compared by its normalized PEM).
#[derive(Debug, Clone)]
pub(crate) struct PublicKeyArg(pub PublicKey);

impl PartialEq for PublicKeyArg {
    fn eq(&self, other: &Self) -> bool {
        self.0.pem() == other.0.pem()
    }
}

/// A frame that was refused.
#[derive(Debug, PartialEq)]
pub(crate) struct Rejected {
    pub(crate) error: ProtocolError,
    /// The frame named `register/ua`: its rejection closes the connection.
    pub(crate) register_ua: bool,
}

/// The commands of §2, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum Name {
    #[serde(rename = "register/ua")]
    RegisterUa,
    #[serde(rename = "register/wa")]
    RegisterWa,
    #[serde(rename = "unregister/wa")]
    UnregisterWa,
    #[serde(rename = "ack")]
    Ack,
    #[serde(rename = "count")]
    Count,
    #[serde(other)]
    Unknown,
}

/// A field that may be absent (or null), well-typed, or present with the wrong type.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    Valid(T),
    Invalid,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Field::Absent);
        }
        Ok(T::deserialize(value).map_or(Field::Invalid, Field::Valid))
    }
}

impl<T> Field<T> {
    fn valid(self) -> Option<T> {
        match self {
            Field::Valid(v) => Some(v),
            Field::Absent | Field::Invalid => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    command: Field<Name>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RegisterUaData {
    #[serde(default)]
    uatoken: Field<String>,
    #[serde(default)]
    interface: Field<InterfaceData>,
    #[serde(default, rename = "countEvents")]
    count_events: Field<bool>,
}

#[derive(Deserialize)]
struct InterfaceData {
    #[serde(default)]
    ip: Field<String>,
    #[serde(default)]
    port: Field<Port>,
}

/// The original clients send the port as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct WaData {
    #[serde(default)]
    uatoken: Field<String>,
    #[serde(default)]
    watoken: Field<String>,
    #[serde(default)]
    pbkbase64: Field<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckData {
    #[serde(default)]
    message_id: Field<MessageId>,
    #[serde(default)]
    message_ids: Field<Vec<MessageId>>,
}

fn err(code: Code, reason: &'static str) -> ProtocolError {
    ProtocolError::new(code, reason)
}

/// Parses one text frame.
pub(crate) fn parse(text: &str) -> Result<Command, Rejected> {
    if text.trim() == "PING" {
        return Ok(Command::Ping);
    }
    let reject = |error| Rejected {
        error,
        register_ua: false,
    };
    let envelope: Envelope<'_> = serde_json::from_str(text)
        .map_err(|_| reject(err(Code::BadJson, "frame is not valid JSON")))?;
    let name = match envelope.command {
        Field::Valid(Name::Unknown) => {
            return Err(reject(err(
                Code::MethodNotAllowed,
                "command not recognized",
            )))
        }
        Field::Valid(name) => name,
        Field::Absent | Field::Invalid => {
            return Err(reject(err(Code::MethodNotAllowed, "no command")))
        }
    };
    let data = envelope.data.map_or("{}", RawValue::get);
    command(name, data).map_err(|error| Rejected {
        error,
        register_ua: name == Name::RegisterUa,
    })
}

fn command(name: Name, data: &str) -> Result<Command, ProtocolError> {
    match name {
        Name::RegisterUa => {
            let data: RegisterUaData = fields(data)?;
            Ok(Command::RegisterUa {
                uatoken: uatoken(data.uatoken)?,
                interface: interface(data.interface)?,
                count_events: match data.count_events {
                    Field::Absent => false,
                    Field::Valid(on) => on,
                    Field::Invalid => {
                        return Err(err(Code::BadField, "countEvents must be true or false"))
                    }
                },
            })
        }
        Name::RegisterWa | Name::UnregisterWa => {
            let data: WaData = fields(data)?;
            let (uatoken, watoken, pbk) = (
                uatoken(data.uatoken)?,
                watoken(data.watoken)?,
                pbk(data.pbkbase64)?,
            );
            Ok(if name == Name::RegisterWa {
                Command::RegisterWa {
                    uatoken,
                    watoken,
                    pbk,
                }
            } else {
                Command::UnregisterWa {
                    uatoken,
                    watoken,
                    pbk,
                }
            })
        }
        Name::Ack => {
            let data: AckData = fields(data)?;
            Ok(Command::Ack {
                message_ids: ack_ids(data)?,
            })
        }
        Name::Count => Ok(Command::Count),
        Name::Unknown => Err(err(Code::MethodNotAllowed, "command not recognized")),
    }
}

/// The data object; `null` counts as empty. Every field is a [`Field`], so that only a
/// `data` that is not an object fails here. (serde would also read a struct from an array:
/// that is refused first.)
fn fields<T: DeserializeOwned>(data: &str) -> Result<T, ProtocolError> {
    let not_an_object = || err(Code::Generic, "data must be an object");
    let data = match data.trim() {
        "null" => "{}",
        object if object.starts_with('{') => object,
        _ => return Err(not_an_object()),
    };
    serde_json::from_str(data).map_err(|_| not_an_object())
}

fn uatoken(field: Field<String>) -> Result<String, ProtocolError> {
    field
        .valid()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| err(Code::NoUaToken, "no uatoken sent"))
}

fn watoken(field: Field<String>) -> Result<String, ProtocolError> {
    field
        .valid()
        .filter(|w| !w.is_empty() && w.len() <= MAX_WATOKEN)
        .ok_or_else(|| err(Code::BadWaToken, "watoken missing or not valid"))
}

fn pbk(field: Field<String>) -> Result<Option<PublicKeyArg>, ProtocolError> {
    match field {
        Field::Absent => Ok(None),
        Field::Valid(s) if s.is_empty() => Ok(None),
        Field::Valid(s) => PublicKey::from_base64(&s)
            .map(|k| Some(PublicKeyArg(k)))
            .map_err(|_| {
                err(
                    Code::BadPublicKey,
                    "pbkbase64 is not a valid RSA public key",
                )
            }),
        Field::Invalid => Err(err(Code::BadPublicKey, "pbkbase64 must be a string")),
    }
}

fn interface(field: Field<InterfaceData>) -> Result<Option<Interface>, ProtocolError> {
    let bad = || {
        err(
            Code::BadField,
            "interface must be {\"ip\": \"...\", \"port\": N}",
        )
    };
    let data = match field {
        Field::Absent => return Ok(None),
        Field::Valid(data) => data,
        Field::Invalid => return Err(bad()),
    };
    let ip = data
        .ip
        .valid()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(bad)?;
    let port = match data.port.valid() {
        Some(Port::Number(n)) => Some(n),
        Some(Port::Text(s)) => s.trim().parse().ok(),
        None => None,
    }
    .and_then(|p| u16::try_from(p).ok())
    .filter(|p| *p > 0)
    .ok_or_else(bad)?;
    Ok(Some(Interface { ip, port }))
}

fn ack_ids(data: AckData) -> Result<Vec<MessageId>, ProtocolError> {
    let ids = match (data.message_id, data.message_ids) {
        (Field::Valid(id), Field::Absent) => vec![id],
        (Field::Absent, Field::Valid(ids)) => ids,
        _ => {
            return Err(err(
                Code::Generic,
                "ack needs messageId (string) or messageIds (array of strings)",
            ))
        }
    };
    if ids.len() > MAX_ACK_IDS {
        return Err(err(Code::TooBig, "too many message ids in one ack"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Code {
        parse(text).unwrap_err().error.code
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
                }),
                count_events: false,
            }
        );
        assert_eq!(
            parse(r#"{"command":"register/ua","data":{"uatoken":"t","interface":{"ip":"::1","port":7},"countEvents":true}}"#)
                .unwrap(),
            Command::RegisterUa {
                uatoken: "t".into(),
                interface: Some(Interface {
                    ip: "::1".parse().unwrap(),
                    port: 7
                }),
                count_events: true,
            }
        );
        assert_eq!(parse(r#"{"command":"count"}"#).unwrap(), Command::Count);
        assert_eq!(
            code(r#"{"command":"register/ua","data":{"uatoken":"t","countEvents":"yes"}}"#),
            Code::BadField
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
            parse(
                r#"{"command":"unregister/wa","data":{"uatoken":"t","watoken":"w","pbkbase64":""}}"#
            ),
            Ok(Command::UnregisterWa { pbk: None, .. })
        ));
        assert_eq!(
            parse(r#"{"command":"ack","data":{"messageIds":["a","b"]}}"#).unwrap(),
            Command::Ack {
                message_ids: vec![MessageId::new("a"), MessageId::new("b")]
            }
        );
        assert_eq!(
            parse(r#"{"command":"ack","data":{"messageId":"a"}}"#).unwrap(),
            Command::Ack {
                message_ids: vec![MessageId::new("a")]
            }
        );
    }

    #[test]
    fn bad_frames_get_their_codes() {
        assert_eq!(code("{"), Code::BadJson);
        assert_eq!(
            code("[1]"),
            Code::MethodNotAllowed,
            "JSON, but no command in it"
        );
        assert_eq!(code(r#"{"data":{}}"#), Code::MethodNotAllowed);
        assert_eq!(code(r#"{"command":5}"#), Code::MethodNotAllowed);
        assert_eq!(code(r#"{"command":"fly"}"#), Code::MethodNotAllowed);
        assert_eq!(
            code(r#"{"command":"register/ua","data":{}}"#),
            Code::NoUaToken
        );
        assert_eq!(code(r#"{"command":"register/ua"}"#), Code::NoUaToken);
        assert_eq!(
            code(r#"{"command":"register/ua","data":{"uatoken":7}}"#),
            Code::NoUaToken
        );
        assert_eq!(
            code(r#"{"command":"register/ua","data":[1]}"#),
            Code::Generic
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
            code(r#"{"command":"register/ua","data":{"uatoken":"t","interface":"x"}}"#),
            Code::BadField
        );
        assert_eq!(
            code(r#"{"command":"register/wa","data":{"uatoken":"t"}}"#),
            Code::BadWaToken
        );
        assert_eq!(
            code(r#"{"command":"register/wa","data":{"uatoken":"t","watoken":5}}"#),
            Code::BadWaToken
        );
        assert_eq!(
            code(
                r#"{"command":"register/wa","data":{"uatoken":"t","watoken":"w","pbkbase64":"nope"}}"#
            ),
            Code::BadPublicKey
        );
        assert_eq!(
            code(r#"{"command":"register/wa","data":{"uatoken":"t","watoken":"w","pbkbase64":3}}"#),
            Code::BadPublicKey
        );
        assert_eq!(
            code(r#"{"command":"register/wa","data":{"watoken":"w"}}"#),
            Code::NoUaToken
        );
        assert_eq!(
            code(r#"{"command":"ack","data":{"messageIds":[1]}}"#),
            Code::Generic
        );
        assert_eq!(code(r#"{"command":"ack","data":{}}"#), Code::Generic);
        assert_eq!(
            code(r#"{"command":"ack","data":{"messageId":"a","messageIds":["b"]}}"#),
            Code::Generic
        );
        let many: Vec<String> = (0..=MAX_ACK_IDS).map(|i| i.to_string()).collect();
        let frame = serde_json::json!({"command": "ack", "data": {"messageIds": many}});
        assert_eq!(code(&frame.to_string()), Code::TooBig);
    }

    #[test]
    fn a_refused_register_ua_is_known_as_one() {
        for frame in [
            r#"{"command":"register/ua","data":{}}"#,
            r#"{"command":"register/ua","data":"x"}"#,
        ] {
            assert!(parse(frame).unwrap_err().register_ua, "{frame}");
        }
        for frame in [
            r#"{"command":"register/wa","data":{"x":"register/ua"}}"#,
            "{register/ua",
            r#"{"command":"ack","data":{}}"#,
        ] {
            assert!(!parse(frame).unwrap_err().register_ua, "{frame}");
        }
    }
}
