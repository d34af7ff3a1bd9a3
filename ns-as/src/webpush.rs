//! The Web Push side of ns-as (WEBPUSH.md §3): push endpoints, message locations and the
//! UnifiedPush discovery answer. A message goes through the same pipeline as a Telefónica
//! notification: stored, then published on `newMessages`, and only then answered `201`.

use std::sync::Arc;

use bytes::Bytes;
use common::delivery::StatusReport;
use common::model::MessageId;
use common::notification::{Notification, Payload, PushMessage};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use common::model::EpochSecs;
use common::vapid::{self, PublicKey};
use common::webpush::{
    self, EndpointVersion, PushError, PushErrorKind, PushHeaders, RawHeaders, Subscription,
    MAX_BODY,
};
use futures::Stream;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Buf, Reply};

use crate::State;

/// `POST /wpush/{version}/{token}`: accepts one push message.
pub(crate) async fn push<S, B>(
    state: Arc<State>,
    version: String,
    token: String,
    headers: HeaderMap,
    mut body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let accepted = accept(&state, &version, &token, &headers, &mut body).await;
    if accepted.is_err() {
        // Refused before its body was read (or part way): read the rest, so that a sender
        // writing it all before reading gets the answer rather than a reset.
        ns_http::drain(&mut body, ns_http::DRAIN_LIMIT).await;
    }
    match accepted {
        Ok((message_id, ttl)) => {
            state.metrics.accepted.inc();
            let location = format!(
                "{}/m/{}",
                state.public.base_url(),
                webpush::location_token(&state.secret, &message_id, ttl > 0)
            );
            let mut response = StatusCode::CREATED.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&location) {
                headers.insert("location", value);
            }
            headers.insert("ttl", HeaderValue::from(ttl));
            response
        }
        Err(e) => {
            if e.kind == PushErrorKind::Unavailable {
                state.metrics.unavailable.inc();
            } else {
                state.metrics.rejected.inc();
            }
            error_reply(&e, &state)
        }
    }
}

/// The checks of WEBPUSH.md §3 in their order, then the message stored and published.
/// Returns its id and the TTL applied.
async fn accept<S, B>(
    state: &State,
    version: &str,
    token: &str,
    headers: &HeaderMap,
    body: &mut S,
) -> Result<(MessageId, u32), PushError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let declared = header(headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_big());
    }
    let version = match version {
        "v1" => EndpointVersion::V1,
        "v2" => EndpointVersion::V2,
        _ => return Err(unknown_endpoint()),
    };
    let now = state.clock.now();
    let sub = Subscription::open(&state.secret, token).filter(|s| s.version() == version);
    // On a v2 endpoint, VAPID comes first: an unauthenticated sender learns nothing of the
    // subscription.
    if version == EndpointVersion::V2 {
        let key = verify_vapid(state, headers, now)?;
        if sub.as_ref().is_some_and(|s| !s.is_bound_to(key.as_bytes())) {
            return Err(PushError::new(
                PushErrorKind::Unauthorized,
                "the VAPID key is not the one this subscription was made with",
            ));
        }
    }
    let sub = sub.ok_or_else(unknown_endpoint)?;
    let app_token = sub.app_token(&state.secret);
    let ua = sub.ua();
    let subscribed = state.store.app_uas(&app_token).await.map_err(|e| {
        tracing::warn!(error = %e, "subscription look-up failed");
        unavailable()
    })?;
    if !subscribed.contains(&ua) {
        return Err(PushError::new(
            PushErrorKind::Gone,
            "the subscription was removed",
        ));
    }
    if version == EndpointVersion::V1 && header(headers, "authorization").is_some() {
        verify_vapid(state, headers, now)?;
    }
    let body = read_body(body).await?;
    let raw = RawHeaders {
        ttl: header(headers, "ttl"),
        urgency: header(headers, "urgency"),
        topic: header(headers, "topic"),
        content_encoding: header(headers, "content-encoding"),
        encryption: header(headers, "encryption"),
        crypto_key: header(headers, "crypto-key"),
    };
    let parsed = PushHeaders::parse(raw, body.len())?;
    if !state.limiter.allow(app_token.as_str()) {
        return Err(PushError::new(
            PushErrorKind::RateLimited,
            "too many messages for this subscription",
        ));
    }

    let message_id = MessageId::new(uuid::Uuid::now_v7().simple().to_string());
    let notification = Notification {
        // Without a Topic, a message replaces nothing: its own id is its AS id.
        id: parsed
            .topic
            .unwrap_or_else(|| message_id.as_str().to_owned()),
        message_id: message_id.clone(),
        app_token,
        payload: Payload::Push(PushMessage {
            channel_id: sub.channel.to_string(),
            data: body,
            encoding: parsed.encoding,
        }),
        ttl: parsed.ttl,
        timestamp: now,
        expires_at: now.plus(i64::from(parsed.ttl)),
        priority: parsed.priority,
        created_at: state.clock.now_millis(),
    };
    if !crate::room_for(state, &notification, now)
        .await
        .map_err(|crate::Unavailable| unavailable())?
    {
        return Err(PushError::new(
            PushErrorKind::QuotaExceeded,
            "this subscription has too many pending messages; retry once some were \
             acked or have expired",
        ));
    }
    crate::store_and_publish(state, notification, now)
        .await
        .map_err(|crate::Unavailable| unavailable())?;
    Ok((message_id, parsed.ttl))
}

/// The VAPID key of a request, checked against the endpoint's origin.
fn verify_vapid(
    state: &State,
    headers: &HeaderMap,
    now: EpochSecs,
) -> Result<PublicKey, PushError> {
    let authorization = header(headers, "authorization").ok_or_else(|| {
        PushError::new(
            PushErrorKind::Unauthorized,
            "this endpoint needs a VAPID Authorization header",
        )
    })?;
    let crypto_key = header(headers, "crypto-key");
    if let Some(key) = state.vapid.get(authorization, crypto_key, now) {
        return Ok(key);
    }
    let claim = vapid::verify(authorization, crypto_key, state.public.origin(), now)
        .map_err(|e| PushError::new(PushErrorKind::Unauthorized, format!("VAPID: {e}")))?;
    state
        .vapid
        .put(authorization, crypto_key, claim.key.clone(), claim.expires);
    Ok(claim.key)
}

/// Most VAPID headers remembered as verified; past that the cache starts over.
const VAPID_CACHE_LIMIT: usize = 10_000;

/// VAPID headers already verified, until their token expires. A sender signs one token and
/// sends it for hours, and checking its ES256 signature costs far more CPU than the rest of
/// a request: a header seen before, byte for byte, needs only its expiry checked again. (The
/// audience is this server's origin, the same for every request.)
#[derive(Default)]
pub(crate) struct VapidCache {
    /// By the two headers as received (header values hold no line breaks), the key and
    /// the token's expiry.
    verified: Mutex<HashMap<String, (PublicKey, EpochSecs)>>,
}

fn cache_key(authorization: &str, crypto_key: Option<&str>) -> String {
    format!("{authorization}\n{}", crypto_key.unwrap_or_default())
}

impl VapidCache {
    fn get(
        &self,
        authorization: &str,
        crypto_key: Option<&str>,
        now: EpochSecs,
    ) -> Option<PublicKey> {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        match verified.get(&cache_key(authorization, crypto_key)) {
            Some((public, expires)) if *expires > now => Some(public.clone()),
            _ => None,
        }
    }

    fn put(
        &self,
        authorization: &str,
        crypto_key: Option<&str>,
        key: PublicKey,
        expires: EpochSecs,
    ) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VAPID_CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(cache_key(authorization, crypto_key), (key, expires));
    }
}

/// Reads the body, refusing it as soon as it passes [`MAX_BODY`].
async fn read_body<S, B>(body: &mut S) -> Result<Bytes, PushError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    ns_http::read_body(body, MAX_BODY)
        .await
        .map_err(|e| match e {
            ns_http::BodyError::TooBig => too_big(),
            ns_http::BodyError::Unreadable => {
                PushError::new(PushErrorKind::MissingHeader, "the body could not be read")
            }
        })
}

/// `GET /wpush/{version}/{token}`: what a UnifiedPush distributor asks of an endpoint.
pub(crate) fn discovery(state: &State, token: &str) -> Response {
    if Subscription::open(&state.secret, token).is_none() {
        return error_reply(&unknown_endpoint(), state);
    }
    warp::reply::json(&serde_json::json!({"unifiedpush": {"version": 1}})).into_response()
}

/// `GET /m/{location}`: the delivery status of a message.
pub(crate) async fn status(state: Arc<State>, location: String) -> Response {
    let Some((message_id, stored)) = webpush::open_location(&state.secret, &location) else {
        return error_reply(&unknown_message(), &state);
    };
    if !stored {
        // `TTL: 0`: only ever sent to UAs connected at the time, and never kept.
        let report = StatusReport {
            id: message_id.to_string(),
            message_id,
            deliveries: Vec::new(),
        };
        return warp::reply::json(&report).into_response();
    }
    match state.store.report(&message_id, state.clock.now()).await {
        Ok(Some(report)) => warp::reply::json(&report).into_response(),
        Ok(None) => error_reply(&unknown_message(), &state),
        Err(e) => {
            tracing::warn!(error = %e, "status look-up failed");
            error_reply(&unavailable(), &state)
        }
    }
}

/// `DELETE /m/{location}`: withdraws a message wherever it is still pending.
pub(crate) async fn withdraw(state: Arc<State>, location: String) -> Response {
    let Some((message_id, _)) = webpush::open_location(&state.secret, &location) else {
        return error_reply(&unknown_message(), &state);
    };
    match state.store.withdraw(&message_id, state.clock.now()).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error_reply(&unknown_message(), &state),
        Err(e) => {
            tracing::warn!(error = %e, "withdrawing a message failed");
            error_reply(&unavailable(), &state)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn too_big() -> PushError {
    PushError::new(
        PushErrorKind::TooBig,
        "the body is over 4096 bytes; keep the plaintext under 3993 bytes",
    )
}

fn unknown_endpoint() -> PushError {
    PushError::new(PushErrorKind::NotFound, "no such push endpoint")
}

fn unknown_message() -> PushError {
    PushError::new(PushErrorKind::NotFound, "no such message")
}

fn unavailable() -> PushError {
    PushError::new(
        PushErrorKind::Unavailable,
        "the message can't be stored right now; retry",
    )
}

/// The HTTP status of each kind of refusal.
fn status_of(kind: PushErrorKind) -> StatusCode {
    match kind {
        PushErrorKind::MissingHeader
        | PushErrorKind::BadTtl
        | PushErrorKind::BadTopic
        | PushErrorKind::BadUrgency
        | PushErrorKind::BadEncoding
        | PushErrorKind::MissingCryptoKeys => StatusCode::BAD_REQUEST,
        PushErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        PushErrorKind::NotFound => StatusCode::NOT_FOUND,
        PushErrorKind::Gone => StatusCode::GONE,
        PushErrorKind::TooBig => StatusCode::PAYLOAD_TOO_LARGE,
        PushErrorKind::RateLimited | PushErrorKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        PushErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON error body of WEBPUSH.md §3, with `Retry-After` where the sender should wait.
fn error_reply(error: &PushError, state: &State) -> Response {
    let status = status_of(error.kind);
    let body = serde_json::json!({
        "code": status.as_u16(),
        "errno": error.kind.errno(),
        "error": status.canonical_reason().unwrap_or(""),
        "message": error.message,
    });
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    ns_http::mark(
        &mut response,
        ns_http::Refusal::webpush(status.as_u16(), Some(error.kind.errno())),
    );
    let retry = match error.kind {
        PushErrorKind::RateLimited => Some(state.limiter.retry_after_secs()),
        PushErrorKind::Unavailable => Some(RETRY_UNAVAILABLE_SECS),
        _ => None,
    };
    if let Some(secs) = retry {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// Every refusal of a push request, registered up front.
pub(crate) fn refusals() -> Vec<ns_http::Refusal> {
    use PushErrorKind as K;
    [
        K::MissingHeader,
        K::BadTtl,
        K::BadTopic,
        K::BadUrgency,
        K::BadEncoding,
        K::MissingCryptoKeys,
        K::Unauthorized,
        K::NotFound,
        K::Gone,
        K::TooBig,
        K::RateLimited,
        K::QuotaExceeded,
        K::Unavailable,
    ]
    .into_iter()
    .map(|kind| ns_http::Refusal::webpush(status_of(kind).as_u16(), Some(kind.errno())))
    .collect()
}

/// What a sender refused with 503 is told to wait.
const RETRY_UNAVAILABLE_SECS: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_vapid_header_is_good_only_until_its_token_expires() {
        let cache = VapidCache::default();
        let signer = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("a key");
        let key = PublicKey::from(signer.verifying_key());
        assert_eq!(cache.get("vapid t=a,k=b", None, EpochSecs(10)), None);
        cache.put("vapid t=a,k=b", None, key.clone(), EpochSecs(100));
        assert_eq!(
            cache.get("vapid t=a,k=b", None, EpochSecs(99)),
            Some(key.clone())
        );
        assert_eq!(cache.get("vapid t=a,k=b", None, EpochSecs(100)), None);
        assert_eq!(
            cache.get("vapid t=a,k=b", Some("p256ecdsa=x"), EpochSecs(10)),
            None,
            "another Crypto-Key is another header"
        );
        assert_eq!(cache.get("vapid t=a,k=c", None, EpochSecs(10)), None);
    }
}
