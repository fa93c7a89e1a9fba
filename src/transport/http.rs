//! The HTTP shim: the JWKS and OpenID discovery documents for off-the-shelf verifiers,
//! health endpoints, the Transaction Token endpoint (`POST /token`, in `token`) and the
//! status lists (`GET /statuslists/{id}`, in `status_lists`). The JWKS body and ETag come pre-rendered from the key set; a request
//! only compares a header and clones a reference-counted buffer.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use opentelemetry::KeyValue;
use tracing::Instrument as _;

use crate::{
    authority::Authority,
    metrics::{AuthorityState, Metrics},
    telemetry::traces,
    transport::{exchange::Exchanger, status_lists, token},
};

/// What the handlers share.
#[derive(Clone, Debug)]
pub(crate) struct HttpState {
    pub(crate) authority: Arc<Authority>,
    /// True from keys loaded until shutdown starts.
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) jwks_max_age: u64,
    pub(crate) metrics: Arc<Metrics>,
    /// Txn-Token requests (`POST /token`), when the policy has a `[txn]` table.
    pub(crate) exchanger: Exchanger,
}

pub(crate) fn router(state: HttpState) -> Router {
    // `get` answers HEAD too, and 405 (with `Allow`) for any other method on these paths.
    let routes = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(token::PATH, post(token::token))
        .route(status_lists::ROUTE, get(status_lists::status_list))
        .route(
            status_lists::AGGREGATION_ROUTE,
            get(status_lists::aggregation),
        );
    // With traces on, a span per request to a route (after routing: it is named by the
    // route, not by the path asked for).
    let routes = if crate::telemetry::traces::enabled() {
        routes.route_layer(axum::middleware::from_fn(traced))
    } else {
        routes
    };
    routes
        .fallback(not_found)
        .layer(axum::middleware::from_fn(refuse_bodies))
        .with_state(state)
}

/// Runs one request inside its span, a child of the caller's when it sent a `traceparent`.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |path| path.as_str())
        .to_owned();
    let method = method_name(request.method());
    let trace = traces::Trace::server(
        || match method {
            OTHER_METHOD => format!("HTTP {route}").into(),
            _ => format!("{method} {route}").into(),
        },
        traces::parent_from(request.headers()),
        || {
            vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", route.clone()),
            ]
        },
    );
    // The request's log lines carry its trace id.
    let span = tracing::info_span!(
        "http",
        http.request.method = method,
        http.route = route,
        trace_id = trace.trace_id(),
    );
    let response = trace.in_scope(next.run(request).instrument(span)).await;
    let status = response.status();
    trace.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        trace.set_error(status.to_string());
    }
    trace.end();
    response
}

/// What HTTP's semantic conventions record for a method not of the standard nine.
const OTHER_METHOD: &str = "_OTHER";

/// The method as HTTP's semantic conventions record it: one of the nine of RFC 9110 and
/// RFC 5789, else `_OTHER`. A client may send any token as a method, thousands of bytes long:
/// it names no span and reaches no collector.
fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// These endpoints take no body; a request that carries one is refused unread (413). The
/// token endpoint takes a bounded form (`token`).
async fn refuse_bodies(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if request.uri().path() == token::PATH {
        return next.run(request).await;
    }
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if has_body {
        return (StatusCode::PAYLOAD_TOO_LARGE, "requests take no body\n").into_response();
    }
    next.run(request).await
}

async fn jwks(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let keys = state.authority.keys();
    let jwks = keys.jwks();
    let now = state.authority.clock().unix_now();
    let cache_control = cache_control(state.jwks_max_age, keys.next_change(), now);
    let etag =
        HeaderValue::from_str(&jwks.etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let not_modified = if_none_match_hits(&headers, &jwks.etag);
    state.metrics.jwks_response(not_modified);
    if not_modified {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, header_value(&cache_control)),
            ],
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, header_value(&cache_control)),
        ],
        Body::from(jwks.body.clone()),
    )
        .into_response()
}

/// RFC 9110 section 13.1.2: `*` or any listed tag, compared weakly (a `W/` prefix on the
/// client's copy still names the same representation).
pub(super) fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `max-age` never runs past the next scheduled change of the set. Serving stale on error
/// or while revalidating is safe: a key is published for the publish lead before it signs.
fn cache_control(max_age: u64, next_change: Option<u64>, now: u64) -> String {
    let max_age = next_change.map_or(max_age, |at| max_age.min(at.saturating_sub(now)));
    format!("public, max-age={max_age}, stale-while-revalidate=60, stale-if-error=86400")
}

pub(super) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn discovery(State(state): State<HttpState>) -> impl IntoResponse {
    let settings = state.authority.settings();
    let algorithms: Vec<&str> = settings.algorithms.iter().map(|alg| alg.name()).collect();
    let mut document = serde_json::json!({
        "issuer": settings.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", settings.issuer),
        "id_token_signing_alg_values_supported": algorithms,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"],
    });
    // draft-ietf-oauth-status-list: where a verifier finds every list.
    if let Some(lists) = state.authority.status_lists() {
        document["status_list_aggregation_endpoint"] = lists.aggregation_uri().into();
        if let Some(claims) = document["claims_supported"].as_array_mut() {
            claims.push("status".into());
        }
    }
    Json(document)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let now = state.authority.clock().unix_now();
    let store = AuthorityState {
        sync_age: state.authority.sync_age(now),
        history_rewinds: state.authority.history_rewinds(),
        refused_records: state.authority.refused_records(),
        signer_available: state.authority.settings().signers.is_available(),
        status: state
            .authority
            .status_lists()
            .map(|lists| lists.census())
            .unwrap_or_default(),
    };
    let text = state.metrics.render(&store, now);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

#[cfg(test)]
mod tests {
    use super::cache_control;

    #[test]
    fn max_age_stops_at_the_next_change() {
        assert!(cache_control(300, None, 1000).starts_with("public, max-age=300,"));
        assert!(cache_control(300, Some(1100), 1000).starts_with("public, max-age=100,"));
        assert!(cache_control(300, Some(900), 1000).starts_with("public, max-age=0,"));
        assert!(cache_control(300, Some(5000), 1000).contains("stale-if-error="));
    }
}
