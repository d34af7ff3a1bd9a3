//! Entry points for `ns-fuzz`, not an API: the readers of client frames in both dialects,
//! which see untrusted input, and the pure checks a connection makes on what they return.

use common::crypto::Secret;

use crate::webpush::ClientMessage;

/// Parses a Telefónica text frame (§2); whether it was accepted.
pub fn telefonica_frame(text: &str) -> bool {
    crate::frames::parse(text).is_ok()
}

/// Parses a Web Push client message, and checks what a `hello`, `register` or `unregister`
/// names the way a connection would; whether it was accepted.
pub fn webpush_message(text: &str, secret: &Secret) -> bool {
    let _ = crate::webpush::is_webpush(text);
    let Ok(message) = crate::webpush::parse(text) else {
        return false;
    };
    let ua = common::crypto::ua_id("a fuzzed UA");
    match message {
        ClientMessage::Hello { uaid } => {
            crate::webpush::hello_identity(secret, uaid.as_deref());
        }
        ClientMessage::Register { channel_id, key } => {
            crate::webpush::name_subscription(secret, &ua, &channel_id, key.as_deref());
        }
        ClientMessage::Unregister { channel_id } => {
            crate::webpush::name_subscription(secret, &ua, &channel_id, None);
        }
        ClientMessage::Settle(settled) => {
            crate::webpush::settlements(&ua, settled);
        }
        ClientMessage::Ping | ClientMessage::BroadcastSubscribe => {}
    }
    true
}
