//! `POST /token`: the Transaction Token Service's token endpoint (RFC 8693 as
//! draft-ietf-oauth-transaction-tokens-10 profiles it). The form is read whole, at most
//! `MAX_FORM_BYTES`, each parameter at most once (RFC 6749 section 3.2); the answer is the
//! draft's JSON, or an RFC 6749 section 5.2 error, with `Cache-Control: no-store`. Without
//! a `[txn]` table in the policy the path does not exist (404).

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use super::http::HttpState;
use crate::{
    authority::txn::{ExchangeError, ExchangeForm, OAuthError, TXN_TOKEN_TYPE},
    transport::connection::ConnectionInfo,
};

pub(crate) const PATH: &str = "/token";
/// The largest form read: two tokens of the authority's size limit and the two JSON
/// parameters, with room to spare.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub(crate) async fn token(State(state): State<HttpState>, request: Request) -> Response {
    let Some(active) = state.exchanger.enabled() else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let (parts, body) = request.into_parts();
    // A form refused is answered after the credentials are checked, and audited, as every
    // other refusal is.
    let form = read_form(&parts.headers, body).await;
    let authorizations = parts
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|value| value.to_str().unwrap_or(""));
    let connection = parts.extensions.get::<ConnectionInfo>();
    match state
        .exchanger
        .exchange(&active, authorizations, connection, form)
        .await
    {
        Ok(exchanged) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": exchanged.token,
                "issued_token_type": TXN_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": exchanged.expires_at.saturating_sub(state.authority.clock().unix_now()),
            }),
        ),
        Err(error) => error_response(&error),
    }
}

/// The form parameters, each at most once.
async fn read_form(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<ExchangeForm, ExchangeError> {
    let invalid = |description: &str| ExchangeError::new(OAuthError::InvalidRequest, description);
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(invalid(
            "the request must be a form: Content-Type: application/x-www-form-urlencoded",
        ));
    }
    // A compressed body would be read as form text, and refused for what it looks like.
    if let Some(coding) = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|value| value.to_str().unwrap_or("?").trim())
        .find(|coding| !coding.eq_ignore_ascii_case("identity"))
    {
        return Err(invalid(&format!(
            "Content-Encoding {coding} is not accepted: send the form uncompressed"
        )));
    }
    let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| invalid("the form is larger than 64 KiB, or was cut off"))?;
    // `form_urlencoded` decodes lossily: bytes that are not UTF-8 would reach the token as
    // U+FFFD, a value other than the one sent. Percent-decoding the whole body is UTF-8 exactly
    // when every name and value is (the separators are ASCII).
    if percent_encoding::percent_decode(&body)
        .decode_utf8()
        .is_err()
    {
        return Err(invalid("the form is not UTF-8 once percent-decoded"));
    }
    let mut form = ExchangeForm::default();
    // The parameters seen, by bit, empty ones included: `scope=&scope=x` repeats `scope`.
    let mut seen = 0u8;
    for (name, value) in form_urlencoded::parse(&body) {
        let (bit, slot) = match &*name {
            "grant_type" => (0, &mut form.grant_type),
            "requested_token_type" => (1, &mut form.requested_token_type),
            "audience" => (2, &mut form.audience),
            "scope" => (3, &mut form.scope),
            "subject_token" => (4, &mut form.subject_token),
            "subject_token_type" => (5, &mut form.subject_token_type),
            "request_context" => (6, &mut form.request_context),
            "request_details" => (7, &mut form.request_details),
            // RFC 8693's delegation: a Txn-Token has no actor, and one asked for must not be
            // dropped without a word (the requester would take the token for a delegation).
            "actor_token" | "actor_token_type" => {
                return Err(invalid(
                    "actor_token: a Txn-Token names no actor; delegation is not offered here",
                ))
            }
            // RFC 6749 section 3.2: unrecognized parameters are ignored.
            _ => continue,
        };
        if seen & (1 << bit) != 0 {
            // RFC 8693 lets `audience` name several targets; a Txn-Token has one, the trust
            // domain, so that is a target it cannot issue for, not a malformed form.
            if bit == 2 {
                return Err(ExchangeError::new(
                    OAuthError::InvalidTarget,
                    "audience is given more than once: a Txn-Token's only audience is the trust domain",
                ));
            }
            return Err(ExchangeError::new(
                OAuthError::InvalidRequest,
                format!("{name} is given more than once"),
            ));
        }
        seen |= 1 << bit;
        // An empty parameter counts as absent (RFC 6749 section 3.2).
        *slot = Some(value.into_owned()).filter(|value| !value.is_empty());
    }
    Ok(form)
}

/// The only place a Txn-Token refusal becomes an HTTP status: 400 for the request's
/// mistakes (RFC 6749 section 5.2), 401 with a challenge for the requester's credentials,
/// 429 with `Retry-After` for a throttled address, 503 when nothing was issued and a retry may succeed, 500
/// for our own failures.
fn error_response(error: &ExchangeError) -> Response {
    let status = match error.error {
        OAuthError::InvalidRequest
        | OAuthError::InvalidGrant
        | OAuthError::UnauthorizedClient
        | OAuthError::UnsupportedGrantType
        | OAuthError::InvalidScope
        | OAuthError::InvalidTarget => StatusCode::BAD_REQUEST,
        OAuthError::InvalidClient => StatusCode::UNAUTHORIZED,
        OAuthError::SlowDown => StatusCode::TOO_MANY_REQUESTS,
        OAuthError::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        OAuthError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = json_response(
        status,
        &serde_json::json!({
            "error": error.error.code(),
            "error_description": description(&error.description),
        }),
    );
    if let Some(seconds) = error.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if error.error == OAuthError::InvalidClient {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token-authority\", Bearer"),
        );
    }
    response
}

/// RFC 6749 section 5.2: `error_description` holds %x20-21 / %x23-5B / %x5D-7E only.
fn description(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '\'',
        })
        .collect()
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each form refused with the error and description the requester gets.
    #[tokio::test]
    async fn forms_refused_before_any_credential_matters() {
        const FORM: &str = "application/x-www-form-urlencoded";
        // (name, headers, body, error, description)
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
            OAuthError,
            &'static str,
        );
        let cases: [Case; 6] = [
            (
                "json",
                &[("content-type", "application/json")],
                "grant_type=x",
                OAuthError::InvalidRequest,
                "the request must be a form: Content-Type: application/x-www-form-urlencoded",
            ),
            (
                "gzip",
                &[("content-type", FORM), ("content-encoding", "gzip")],
                "grant_type=x",
                OAuthError::InvalidRequest,
                "Content-Encoding gzip is not accepted: send the form uncompressed",
            ),
            (
                "identity, then br",
                &[
                    ("content-type", FORM),
                    ("content-encoding", "identity"),
                    ("content-encoding", "br"),
                ],
                "grant_type=x",
                OAuthError::InvalidRequest,
                "Content-Encoding br is not accepted: send the form uncompressed",
            ),
            (
                "scope twice",
                &[("content-type", FORM)],
                "scope=a&scope=b",
                OAuthError::InvalidRequest,
                "scope is given more than once",
            ),
            (
                "audience twice",
                &[("content-type", FORM)],
                "audience=a&audience=b",
                OAuthError::InvalidTarget,
                "audience is given more than once: a Txn-Token's only audience is the trust domain",
            ),
            (
                "not UTF-8",
                &[("content-type", FORM)],
                "scope=%FF",
                OAuthError::InvalidRequest,
                "the form is not UTF-8 once percent-decoded",
            ),
        ];
        for (name, headers, body, error, description) in cases {
            let mut map = HeaderMap::new();
            for (header, value) in headers {
                map.append(*header, HeaderValue::from_static(value));
            }
            let refused = read_form(&map, axum::body::Body::from(body))
                .await
                .expect_err(name);
            assert_eq!(
                (refused.error, refused.description.as_str()),
                (error, description),
                "{name}"
            );
        }
        let mut identity = HeaderMap::new();
        identity.insert(header::CONTENT_TYPE, HeaderValue::from_static(FORM));
        identity.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let read = read_form(&identity, axum::body::Body::from("scope=a&audience=b"))
            .await
            .unwrap();
        assert_eq!(
            (read.scope.as_deref(), read.audience.as_deref()),
            (Some("a"), Some("b"))
        );
    }

    #[test]
    fn descriptions_keep_only_what_rfc_6749_allows() {
        assert_eq!(
            super::description("scope \"a\" is wider\n\u{e9}"),
            "scope 'a' is wider''"
        );
    }
}
