//! `GET /statuslists/{id}`: a status list as a Status List Token
//! (`application/statuslist+jwt`), with an ETag and a Cache-Control that match its `ttl`.
//! Lists that do not exist (never, or dropped once their tokens all expired) are 404.

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use token_authority_jose::status_list::MEDIA_TYPE;

use super::http::{header_value, if_none_match_hits, HttpState};
use crate::{authority::status::StatusError, telemetry::chain};

/// The route, with the list's id as its last segment.
pub(crate) const ROUTE: &str = "/statuslists/{id}";
/// The Status List Aggregation: every list's URI.
pub(crate) const AGGREGATION_ROUTE: &str = "/statuslists";

/// `GET /statuslists`: the Status List Aggregation (`{"status_lists": [URI, ...]}`), so a
/// verifier can fetch every list before a token names one.
pub(crate) async fn aggregation(State(state): State<HttpState>) -> Response {
    let Some(lists) = state.authority.status_lists() else {
        return (
            StatusCode::NOT_FOUND,
            "this authority keeps no status lists\n",
        )
            .into_response();
    };
    let uris: Vec<String> = lists.ids().into_iter().map(|id| lists.uri(id)).collect();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                header_value(&format!("public, max-age={}", lists.list_ttl())),
            ),
        ],
        serde_json::json!({ "status_lists": uris }).to_string(),
    )
        .into_response()
}

pub(crate) async fn status_list(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    // Only the canonical spelling of an id: "07" or "+7" is not list 7.
    let Some(id) = id.parse::<u64>().ok().filter(|n| n.to_string() == id) else {
        return (StatusCode::NOT_FOUND, "no such status list\n").into_response();
    };
    if !accepts_jwt(&headers) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            format!("status lists are served as {MEDIA_TYPE} only\n"),
        )
            .into_response();
    }
    let now = state.authority.clock().unix_now();
    let served = match state.authority.status_list_token(id, now).await {
        Ok(served) => served,
        Err(StatusError::UnknownList(_) | StatusError::Off) => {
            return (
                StatusCode::NOT_FOUND,
                format!("status list {id} does not exist\n"),
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(error = %chain(&error), list = id, "a status list could not be served");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the status list cannot be served now\n",
            )
                .into_response();
        }
    };
    let cache_control = header_value(&format!("public, max-age={}", served.max_age(now)));
    let etag = header_value(&served.etag);
    if if_none_match_hits(&headers, &served.etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control)],
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE)),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache_control),
        ],
        served.token.clone(),
    )
        .into_response()
}

/// No Accept header, or one that admits the JWT form: the most specific range that names it
/// (`application/statuslist+jwt`, then `application/*`, then `*/*`) with a `q` above 0
/// (RFC 9110 section 12.5.1).
fn accepts_jwt(headers: &HeaderMap) -> bool {
    let mut ranges = 0;
    // The specificity of the most specific range naming the JWT form, and whether its `q`
    // admits it.
    let mut best: Option<(u8, bool)> = None;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        ranges += 1;
        let specificity = match media.as_str() {
            MEDIA_TYPE => 3,
            "application/*" => 2,
            "*/*" => 1,
            _ => continue,
        };
        let refused = parts.filter_map(|p| p.split_once('=')).any(|(name, q)| {
            name.trim().eq_ignore_ascii_case("q") && q.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
        });
        if best.is_none_or(|(most, _)| specificity > most) {
            best = Some((specificity, !refused));
        }
    }
    ranges == 0 || best.is_some_and(|(_, admitted)| admitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_ranges() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            accepts_jwt(&headers)
        };
        assert!(accepts_jwt(&HeaderMap::new()));
        assert!(with("application/statuslist+jwt"));
        assert!(with(
            "application/statuslist+json;q=1, Application/StatusList+JWT;q=0.5"
        ));
        assert!(with("*/*"));
        assert!(!with("application/statuslist+cwt"));
        assert!(!with("text/html"));
        // q=0 is "not acceptable" (RFC 9110 section 12.4.2), and the most specific range wins.
        assert!(!with("application/statuslist+jwt;q=0"));
        assert!(!with("text/html, */*;q=0"));
        assert!(!with("application/statuslist+jwt; q=0.000, */*"));
        assert!(with("application/statuslist+jwt;q=0.1, */*;q=0"));
        assert!(with("application/*, */*;q=0"));
        assert!(!with("application/*;Q=0, */*"));
    }
}
