//! The HTTP edge shared by every service: the one mapping of protocol codes to HTTP
//! statuses, protocol error replies, `/health` and `/metrics`, reading bodies up to a limit,
//! and serving within [`HttpLimits`], over TLS when the process has it, with graceful
//! shutdown.

mod body;
mod health;
mod refusals;
mod server;
pub mod tls;

pub use body::{drain, read_body, BodyError, DRAIN_LIMIT};
pub use health::Health;
pub use refusals::{counted, mark, Refusal, Refusals, REFUSALS};
pub use server::{
    accept, limits, serve, serve_connection, serve_with, with_limits, Admitted, HttpLimits,
};
pub use tls::{with_tls, Incoming, Stream};

use std::convert::Infallible;
use std::sync::Arc;

use common::validate::{Code, ProtocolError};
use health::HealthView;
use ns_runtime::metrics::Registry;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The base URL of `listener`'s port as clients reach it (`https://` under [`with_tls`],
/// else `http://`), for the start-up line that says where a service listens.
pub fn listening_url(listener: &tokio::net::TcpListener) -> std::io::Result<String> {
    let scheme = if tls::tls().is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{}", listener.local_addr()?))
}

/// The HTTP status of each protocol code (§6).
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::TooBig => StatusCode::PAYLOAD_TOO_LARGE,
        Code::RateLimited | Code::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        Code::NotSigned | Code::BadSignature | Code::BadUaToken => StatusCode::UNAUTHORIZED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Generic
        | Code::BadJson
        | Code::BadMessageType
        | Code::BadId
        | Code::BadWaToken
        | Code::BadPublicKey
        | Code::NoUaRegistered
        | Code::NoUaToken
        | Code::Binary
        | Code::BadField => StatusCode::BAD_REQUEST,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    reason: &'a str,
    code: u16,
}

/// `{"status": "ERROR", "reason", "code"}` with the code's HTTP status.
pub fn error_reply(error: &ProtocolError) -> Response {
    let body = ErrorBody {
        status: "ERROR",
        reason: &error.reason,
        code: error.code.number(),
    };
    let mut response =
        warp::reply::with_status(warp::reply::json(&body), status_of(error.code)).into_response();
    if error.code == Code::Unavailable {
        response
            .headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from_static("1"));
    }
    mark(&mut response, Refusal::telefonica(error.code));
    response
}

/// Turns warp's own rejections (no route, wrong method, body too large) into protocol errors.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ProtocolError::new(Code::NotFound, "not found")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ProtocolError::new(Code::TooBig, "body too big")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ProtocolError::new(Code::MethodNotAllowed, "method not allowed")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ProtocolError::new(Code::Generic, "a Content-Length is required")
    } else {
        ProtocolError::new(Code::Generic, "bad request")
    };
    Ok(error_reply(&error))
}

/// `GET /health` and `GET /metrics`.
pub fn ops_routes(
    health: Health,
    registry: Registry,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let view = Arc::new(HealthView::new(health));
    let health = warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .and_then(move || {
            let view = view.clone();
            async move {
                let response = if view.healthy().await {
                    warp::reply::with_status("OK", StatusCode::OK).into_response()
                } else {
                    warp::reply::with_status("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE)
                        .into_response()
                };
                Ok::<_, Infallible>(response)
            }
        });
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            warp::reply::with_header(
                registry.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    health.or(metrics).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_path_is_a_protocol_404() {
        let routes = ops_routes(Health::default(), Registry::default()).recover(recover);
        let res = warp::test::request().path("/nope").reply(&routes).await;
        assert_eq!(res.status(), 404);
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["code"], 404);
        assert_eq!(body["status"], "ERROR");
    }

    #[tokio::test]
    async fn health_and_metrics_answer() {
        let registry = Registry::default();
        registry.counter("ns_test_total", "Test.").inc();
        let routes = ops_routes(Health::default(), registry).recover(recover);
        let res = warp::test::request().path("/health").reply(&routes).await;
        assert_eq!(res.status(), 200);
        let res = warp::test::request().path("/metrics").reply(&routes).await;
        assert!(String::from_utf8_lossy(res.body()).contains("ns_test_total 1"));
    }

    #[tokio::test]
    async fn refusals_are_counted_by_service_and_code() {
        let registry = Registry::default();
        let refusals = Refusals::new("ns-test", &registry, &[]);
        let routes = counted(
            ops_routes(Health::default(), registry.clone())
                .recover(recover)
                .unify(),
            refusals.clone(),
        );
        for _ in 0..2 {
            let res = warp::test::request().path("/nope").reply(&routes).await;
            assert_eq!(res.status(), 404);
        }
        let res = warp::test::request().path("/health").reply(&routes).await;
        assert_eq!(res.status(), 200);
        refusals.count(Refusal::webpush(429, Some(201)));
        let text = registry.render();
        let line = |code: &str, n: u32| {
            format!("ns_refusals_total{{service=\"ns-test\",dialect=\"telefonica\",code=\"{code}\"}} {n}\n")
        };
        assert!(text.contains(&line("404", 2)), "{text}");
        assert!(text.contains(&line("465", 0)), "{text}");
        assert!(
            text.contains("ns_refusals_total{service=\"ns-test\",dialect=\"webpush\",code=\"429\",errno=\"201\"} 1\n"),
            "{text}"
        );
    }
}
