//! The WebSocket session state machine (§2), without I/O: from what the connection has
//! registered so far, it decides what each client frame leads to, which queued
//! notifications are sent after the pending ones, and what is left to release at the end.
//! The first text frame fixes the connection's dialect: Telefónica (PROTOCOL.md) or Web
//! Push (WEBPUSH.md, whose messages are read in [`crate::webpush`]).

use std::collections::VecDeque;

use common::crypto::{self, Secret};
use common::model::{App, AppToken, Interface, MessageId, UaId};
use common::validate::{Code, ProtocolError};

use crate::frames::{self, Command};

/// What the connection does with a client frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Answers `PONG`.
    Pong,
    /// Answers with an error frame; the connection stays open.
    Error(ProtocolError),
    /// Answers with an error frame, then closes: a refused `register/ua`.
    Reject(ProtocolError),
    /// Performs this, then reports back (for `register/ua`, with [`Session::registered`]).
    Do(Action),
}

/// The I/O a command needs, once the session has allowed it.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Store the UA as live on this connection, answer `OK`, send what it is owed.
    RegisterUa {
        ua: UaId,
        interface: Option<Interface>,
        count_events: bool,
    },
    /// Store the app and the UA's registration for it, answer the notify URL.
    RegisterWa { ua: UaId, app: App },
    /// Remove the registration, answer `OK`.
    UnregisterWa { ua: UaId, app_token: AppToken },
    /// Record the acks; no answer.
    Ack {
        ua: UaId,
        message_ids: Vec<MessageId>,
    },
    /// Count what the UA is owed, answer `{"pending": N}`.
    Count { ua: UaId },
}

/// How the server ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// A `register/ua` was refused.
    Rejected,
    /// The UA registered on another connection.
    TakenOver,
    /// The server is shutting down.
    GoingAway,
    /// A Web Push client broke the protocol; the reason goes in the close frame.
    Protocol(&'static str),
    /// A Web Push `hello` could not be stored; the client should come back later.
    Unavailable,
    /// The client stopped answering pings.
    Unresponsive,
}

/// The protocol a connection speaks, fixed by its first text frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[default]
    Undecided,
    Telefonica,
    WebPush,
}

/// What a connection has registered, and what it was sent.
///
/// Every idle connection carries one, so it is small: what only a connection that was sent
/// something needs is in [`Sent`], allocated when first needed.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// The UA registered (its uatoken, or its uaid, verified). The token itself is not kept:
    /// the UA is what a token names.
    registered: Option<UaId>,
    dialect: Dialect,
    /// What was sent on this connection; `None` while there is nothing to remember.
    sent: Option<Box<Sent>>,
}

/// What a connection remembers of what it sent.
#[derive(Debug, Default)]
struct Sent {
    /// The notifications sent right after `OK`, sorted, while the ones routed here meanwhile
    /// are drained: those must not go twice.
    sent_after_ok: Vec<MessageId>,
    /// Web Push: the stored messages sent from the backlog and not settled yet, sorted, and
    /// whether the store may hold more of them. The rest of a large backlog follows once these
    /// are settled, so a UA is never sent more than a bound of them at once.
    backlog: Vec<MessageId>,
    backlog_more: bool,
    /// The last notifications sent on this connection, oldest first, at most
    /// [`RECENT_SENT`]: a copy routed here again (a broker message handled twice, or routed
    /// while its ack was being stored) is not sent again.
    recent: VecDeque<MessageId>,
}

impl Sent {
    fn is_empty(&self) -> bool {
        self.sent_after_ok.is_empty()
            && self.backlog.is_empty()
            && !self.backlog_more
            && self.recent.is_empty()
    }
}

/// How many of the notifications last sent on a connection it remembers.
const RECENT_SENT: usize = 64;

impl Session {
    /// The dialect of the connection, fixed by the first text frame `text` if not yet.
    pub(crate) fn dialect_for(&mut self, text: &str) -> Dialect {
        if self.dialect == Dialect::Undecided {
            self.dialect = if crate::webpush::is_webpush(text) {
                Dialect::WebPush
            } else {
                Dialect::Telefonica
            };
        }
        self.dialect
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// What was sent, to be remembered.
    fn sent_mut(&mut self) -> &mut Sent {
        self.sent.get_or_insert_with(Box::default)
    }

    /// Gives back the room of [`Sent`] once there is nothing in it.
    fn tidy(&mut self) {
        if self.sent.as_ref().is_some_and(|sent| sent.is_empty()) {
            self.sent = None;
        }
    }

    /// Web Push: these backlog messages were sent; `more` if the store may hold others.
    pub(crate) fn backlog_sent(&mut self, ids: impl IntoIterator<Item = MessageId>, more: bool) {
        let mut backlog: Vec<MessageId> = ids.into_iter().collect();
        backlog.sort_unstable();
        let sent = self.sent_mut();
        sent.backlog = backlog;
        sent.backlog_more = more;
        self.tidy();
    }

    /// Web Push: the UA settled these; true when the backlog sent is all settled and the
    /// store may hold more, which are then to be sent.
    pub(crate) fn settled<'a>(&mut self, ids: impl IntoIterator<Item = &'a MessageId>) -> bool {
        let Some(sent) = self.sent.as_mut() else {
            return false;
        };
        for id in ids {
            if let Ok(i) = sent.backlog.binary_search(id) {
                sent.backlog.remove(i);
            }
        }
        if sent.backlog.is_empty() {
            sent.backlog = Vec::new();
        }
        let more = sent.backlog.is_empty() && std::mem::take(&mut sent.backlog_more);
        self.tidy();
        more
    }

    /// The UA registered on this connection, if any.
    pub(crate) fn ua(&self) -> Option<&UaId> {
        self.registered.as_ref()
    }

    /// A text frame.
    pub(crate) fn on_text(&self, text: &str, secret: &Secret) -> Step {
        match frames::parse(text) {
            Ok(command) => self.on_command(command, secret),
            Err(rejected) if rejected.register_ua => Step::Reject(rejected.error),
            Err(rejected) => Step::Error(rejected.error),
        }
    }

    /// A binary frame: the protocol has none.
    pub(crate) fn on_binary(&self) -> Step {
        Step::Error(ProtocolError::new(
            Code::Binary,
            "binary frames not supported",
        ))
    }

    fn on_command(&self, command: Command, secret: &Secret) -> Step {
        let result = match command {
            Command::Ping => return Step::Pong,
            Command::RegisterUa {
                uatoken,
                interface,
                count_events,
            } => {
                return match self.check_register_ua(secret, &uatoken) {
                    Ok(ua) => Step::Do(Action::RegisterUa {
                        ua,
                        interface,
                        count_events,
                    }),
                    Err(e) => Step::Reject(e),
                }
            }
            Command::RegisterWa {
                uatoken,
                watoken,
                pbk,
            } => self.check_same_ua(&uatoken).map(|ua| {
                let pbk = pbk.map(|k| k.0);
                Action::RegisterWa {
                    ua,
                    app: App {
                        app_token: crypto::app_token(secret, &watoken, pbk.as_ref()),
                        pbk: pbk.map(|k| k.pem().to_owned()),
                    },
                }
            }),
            Command::UnregisterWa {
                uatoken,
                watoken,
                pbk,
            } => self.check_same_ua(&uatoken).map(|ua| Action::UnregisterWa {
                ua,
                app_token: crypto::app_token(secret, &watoken, pbk.map(|k| k.0).as_ref()),
            }),
            Command::Ack { message_ids } => self
                .check_any_ua()
                .map(|ua| Action::Ack { ua, message_ids }),
            Command::Count => self.check_any_ua().map(|ua| Action::Count { ua }),
        };
        result.map_or_else(Step::Error, Step::Do)
    }

    /// The token must be genuine, and a connection holds one UA (the same token again is
    /// fine: a client may register again).
    fn check_register_ua(&self, secret: &Secret, uatoken: &str) -> Result<UaId, ProtocolError> {
        let ua = crypto::verify_uatoken(secret, uatoken).ok_or_else(|| {
            ProtocolError::new(Code::BadUaToken, "uatoken not valid; get a new one")
        })?;
        match &self.registered {
            Some(current) if *current != ua => Err(ProtocolError::new(
                Code::Generic,
                "this connection already holds another uatoken",
            )),
            _ => Ok(ua),
        }
    }

    /// WA commands name the uatoken registered on this connection: the token whose UA
    /// (its digest, [`crypto::ua_id`]) is the one registered.
    fn check_same_ua(&self, uatoken: &str) -> Result<UaId, ProtocolError> {
        match &self.registered {
            Some(ua) if *ua == crypto::ua_id(uatoken) => Ok(ua.clone()),
            _ => Err(not_registered()),
        }
    }

    /// Acks need some UA registered.
    fn check_any_ua(&self) -> Result<UaId, ProtocolError> {
        self.ua().cloned().ok_or_else(not_registered)
    }

    /// The `register/ua` (or `hello`) was stored: the connection holds `ua` now.
    pub(crate) fn registered(&mut self, ua: UaId) {
        self.registered = Some(ua);
    }

    /// These were sent right after `OK`; what is drained from the queue next is checked
    /// against them with [`Session::is_new`].
    pub(crate) fn sent_after_ok(&mut self, ids: impl IntoIterator<Item = MessageId>) {
        let mut ids: Vec<MessageId> = ids.into_iter().collect();
        ids.sort_unstable();
        self.sent_mut().sent_after_ok = ids;
        self.tidy();
    }

    /// Whether a notification routed here is to be sent: not when it went out on this
    /// connection lately. Remembers it as sent.
    pub(crate) fn first_routed(&mut self, id: &MessageId) -> bool {
        if self.sent_lately(id) {
            return false;
        }
        self.remember_sent([id.clone()]);
        true
    }

    /// Whether the notification went out on this connection lately.
    pub(crate) fn sent_lately(&self, id: &MessageId) -> bool {
        self.sent
            .as_ref()
            .is_some_and(|sent| sent.recent.contains(id))
    }

    /// Notifications sent on this connection, from the store or routed here.
    pub(crate) fn remember_sent(&mut self, ids: impl IntoIterator<Item = MessageId>) {
        let mut ids = ids.into_iter().peekable();
        if ids.peek().is_none() {
            return;
        }
        let recent = &mut self.sent_mut().recent;
        for id in ids {
            if recent.len() == RECENT_SENT {
                recent.pop_front();
            }
            recent.push_back(id);
        }
    }

    /// Whether a notification routed here during the pending send still needs sending.
    pub(crate) fn is_new(&self, id: &MessageId) -> bool {
        self.sent
            .as_ref()
            .is_none_or(|sent| sent.sent_after_ok.binary_search(id).is_err())
    }

    /// The queue is drained: from now on everything routed here is new.
    pub(crate) fn drained(&mut self) {
        if let Some(sent) = self.sent.as_mut() {
            sent.sent_after_ok = Vec::new();
        }
        self.tidy();
    }

    /// The UA registered on another connection, which owns it now: this one closes with
    /// nothing to release.
    pub(crate) fn taken_over(&mut self) -> Close {
        self.registered = None;
        Close::TakenOver
    }

    /// What to release when the connection ends: the UA it still holds.
    pub(crate) fn into_release(self) -> Option<UaId> {
        self.registered
    }
}

fn not_registered() -> ProtocolError {
    ProtocolError::new(
        Code::NoUaRegistered,
        "no uatoken registered on this connection",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef")
    }

    fn frame(command: &str, data: serde_json::Value) -> String {
        json!({"command": command, "data": data}).to_string()
    }

    fn code(step: Step) -> (bool, Code) {
        match step {
            Step::Error(e) => (false, e.code),
            Step::Reject(e) => (true, e.code),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn register_ua_needs_a_genuine_token_and_its_refusal_closes() {
        let session = Session::default();
        let token = crypto::new_uatoken(&secret());
        let Step::Do(Action::RegisterUa { ua, .. }) =
            session.on_text(&frame("register/ua", json!({"uatoken": token})), &secret())
        else {
            panic!("a genuine token registers");
        };
        assert_eq!(Some(ua), crypto::verify_uatoken(&secret(), &token));

        let forged = crypto::new_uatoken(&Secret::new("another secret!!"));
        let step = session.on_text(&frame("register/ua", json!({"uatoken": forged})), &secret());
        assert_eq!(code(step), (true, Code::BadUaToken));
        let step = session.on_text(&frame("register/ua", json!({})), &secret());
        assert_eq!(
            code(step),
            (true, Code::NoUaToken),
            "a bad register/ua is still one"
        );
    }

    #[test]
    fn wa_commands_and_acks_need_the_registered_ua() {
        let mut session = Session::default();
        let token = crypto::new_uatoken(&secret());
        let wa = frame("register/wa", json!({"uatoken": token, "watoken": "w"}));
        let ack = frame("ack", json!({"messageId": "m"}));
        assert_eq!(
            code(session.on_text(&wa, &secret())),
            (false, Code::NoUaRegistered)
        );
        assert_eq!(
            code(session.on_text(&ack, &secret())),
            (false, Code::NoUaRegistered)
        );

        let ua = crypto::ua_id(&token);
        session.registered(ua.clone());
        assert_eq!(session.ua(), Some(&ua));
        let Step::Do(Action::RegisterWa { ua: for_ua, app }) = session.on_text(&wa, &secret())
        else {
            panic!("register/wa goes ahead");
        };
        assert_eq!(for_ua, ua);
        assert_eq!(app.app_token, crypto::app_token(&secret(), "w", None));
        assert_eq!(
            session.on_text(&ack, &secret()),
            Step::Do(Action::Ack {
                ua: ua.clone(),
                message_ids: vec![MessageId::new("m")]
            })
        );
        let unregister = frame("unregister/wa", json!({"uatoken": token, "watoken": "w"}));
        assert_eq!(
            session.on_text(&unregister, &secret()),
            Step::Do(Action::UnregisterWa {
                ua: ua.clone(),
                app_token: app.app_token
            })
        );

        // Another genuine token: not the one this connection holds.
        let other = crypto::new_uatoken(&secret());
        let wa = frame("register/wa", json!({"uatoken": other, "watoken": "w"}));
        assert_eq!(
            code(session.on_text(&wa, &secret())),
            (false, Code::NoUaRegistered)
        );
        let again = frame("register/ua", json!({"uatoken": other}));
        assert_eq!(
            code(session.on_text(&again, &secret())),
            (true, Code::Generic)
        );
        let same = frame("register/ua", json!({"uatoken": token}));
        assert!(matches!(
            session.on_text(&same, &secret()),
            Step::Do(Action::RegisterUa { .. })
        ));
    }

    #[test]
    fn other_frames() {
        let session = Session::default();
        assert_eq!(session.on_text("PING", &secret()), Step::Pong);
        assert_eq!(
            code(session.on_text("{", &secret())),
            (false, Code::BadJson)
        );
        assert_eq!(code(session.on_binary()), (false, Code::Binary));
    }

    #[test]
    fn what_was_sent_after_ok_is_not_sent_again_until_drained() {
        let mut session = Session::default();
        session.sent_after_ok(["c", "a", "b"].map(MessageId::new));
        assert!(!session.is_new(&MessageId::new("a")));
        assert!(session.is_new(&MessageId::new("d")));
        session.drained();
        assert!(session.is_new(&MessageId::new("a")));
    }

    #[test]
    fn a_notification_sent_lately_is_not_sent_again_when_routed_here_again() {
        let mut session = Session::default();
        let id = |i: usize| MessageId::new(format!("m{i}"));
        session.remember_sent([id(0)]);
        assert!(!session.first_routed(&id(0)), "sent from the store");
        assert!(session.first_routed(&id(1)));
        assert!(!session.first_routed(&id(1)), "routed twice");
        for i in 2..=RECENT_SENT {
            assert!(session.first_routed(&id(i)));
        }
        assert!(
            session.first_routed(&id(0)),
            "only the last {RECENT_SENT} are remembered"
        );
    }

    #[test]
    fn the_first_text_frame_fixes_the_dialect() {
        let mut session = Session::default();
        assert_eq!(session.dialect(), Dialect::Undecided);
        assert_eq!(
            session.dialect_for(r#"{"messageType":"hello"}"#),
            Dialect::WebPush
        );
        assert_eq!(session.dialect_for("PING"), Dialect::WebPush);
        let mut session = Session::default();
        assert_eq!(session.dialect_for("PING"), Dialect::Telefonica);
        assert_eq!(
            session.dialect_for(r#"{"messageType":"hello"}"#),
            Dialect::Telefonica
        );
    }

    #[test]
    fn the_rest_of_a_backlog_follows_once_what_was_sent_is_settled() {
        let mut session = Session::default();
        session.backlog_sent(["b", "a"].map(MessageId::new), true);
        assert!(!session.settled(&[MessageId::new("a"), MessageId::new("z")]));
        assert!(session.settled(&[MessageId::new("b")]), "all settled: more");
        assert!(!session.settled(&[MessageId::new("b")]), "asked once");
        session.backlog_sent([MessageId::new("c")], false);
        assert!(!session.settled(&[MessageId::new("c")]), "nothing more");
    }

    #[test]
    fn a_taken_over_connection_releases_nothing() {
        let token = crypto::new_uatoken(&secret());
        let ua = crypto::ua_id(&token);
        let mut session = Session::default();
        session.registered(ua.clone());
        let mut kept = Session::default();
        kept.registered(ua.clone());
        assert_eq!(kept.into_release(), Some(ua));
        assert_eq!(session.taken_over(), Close::TakenOver);
        assert_eq!(session.into_release(), None);
        assert_eq!(Session::default().into_release(), None);
    }
}
