//! Counting refusals: every protocol error answered, by service, dialect and code, in
//! `ns_refusals_total`. An error reply carries a [`Refusal`] in its extensions;
//! [`counted`] wraps a service's routes and counts what they answer, so the count lives in
//! one place per service whatever route refused.

use std::convert::Infallible;
use std::sync::Arc;

use common::validate::Code;
use ns_runtime::metrics::{Metric, Registry};
use warp::reply::Response;
use warp::Filter;

/// The counter's name.
pub const REFUSALS: &str = "ns_refusals_total";

/// Every code of PROTOCOL.md §6.
const CODES: [Code; 19] = [
    Code::Generic,
    Code::NotFound,
    Code::MethodNotAllowed,
    Code::TooBig,
    Code::RateLimited,
    Code::BadJson,
    Code::BadMessageType,
    Code::NotSigned,
    Code::BadId,
    Code::BadSignature,
    Code::BadUaToken,
    Code::BadWaToken,
    Code::BadPublicKey,
    Code::NoUaRegistered,
    Code::NoUaToken,
    Code::Binary,
    Code::BadField,
    Code::QuotaExceeded,
    Code::Unavailable,
];

/// One refused request or frame: in which dialect, with which code (a Telefónica code of
/// §6; for Web Push the `code` of its JSON error, or the `status` of a WebSocket reply, or a
/// WebSocket close code), and for Web Push HTTP errors their `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub dialect: &'static str,
    pub code: u16,
    pub errno: Option<u16>,
}

impl Refusal {
    pub fn telefonica(code: Code) -> Self {
        Refusal {
            dialect: "telefonica",
            code: code.number(),
            errno: None,
        }
    }

    pub fn webpush(code: u16, errno: Option<u16>) -> Self {
        Refusal {
            dialect: "webpush",
            code,
            errno,
        }
    }
}

/// The refusal counters of one service: the codes it answers registered up front (so that a
/// dashboard shows zeros), others on first use.
#[derive(Clone)]
pub struct Refusals {
    service: &'static str,
    registry: Registry,
    known: Arc<[(Refusal, Arc<Metric>)]>,
}

impl Refusals {
    /// The counters of `service`, with `more` (its other refusals) registered up front too.
    pub fn new(service: &'static str, registry: &Registry, more: &[Refusal]) -> Self {
        let known = CODES
            .iter()
            .map(|c| Refusal::telefonica(*c))
            .chain(more.iter().copied())
            .map(|r| (r, counter(registry, service, r)))
            .collect();
        Refusals {
            service,
            registry: registry.clone(),
            known,
        }
    }

    /// The counters of a service that answers no protocol (the monitor: only its health and
    /// metrics), each registered on first use.
    pub fn on_first_use(service: &'static str, registry: &Registry) -> Self {
        Refusals {
            service,
            registry: registry.clone(),
            known: Arc::new([]),
        }
    }

    pub fn count(&self, refusal: Refusal) {
        match self.known.iter().find(|(r, _)| *r == refusal) {
            Some((_, metric)) => metric.inc(),
            // Not foreseen: found under the registry's lock, which is fine for a rarity.
            None => counter(&self.registry, self.service, refusal).inc(),
        }
    }
}

fn counter(registry: &Registry, service: &'static str, r: Refusal) -> Arc<Metric> {
    let code = r.code.to_string();
    let errno = r.errno.map(|e| e.to_string());
    let mut labels = vec![
        ("service", service),
        ("dialect", r.dialect),
        ("code", code.as_str()),
    ];
    if let Some(errno) = &errno {
        labels.push(("errno", errno.as_str()));
    }
    registry.counter_with(
        REFUSALS,
        "Protocol errors answered, by service, dialect and code: a code of PROTOCOL.md, a Web \
         Push status (with its errno over HTTP), or the close code of a WebSocket refused.",
        &labels,
    )
}

/// Marks `response` as the refusal `refusal`, for [`counted`].
pub fn mark(response: &mut Response, refusal: Refusal) {
    response.extensions_mut().insert(refusal);
}

/// `routes`, counting in `refusals` every answer marked with a [`Refusal`].
pub fn counted<F>(
    routes: F,
    refusals: Refusals,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone,
{
    routes.map(move |response: Response| {
        if let Some(refusal) = response.extensions().get::<Refusal>() {
            refusals.count(*refusal);
        }
        response
    })
}
