//! What the load tasks share: the gRPC channels and HTTP client of the target, the
//! request each mode sends, and what one task records (`Tally`).

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, ClientTlsConfig},
    Request,
};

use super::BenchError;
use crate::{
    config::{BenchArgs, BenchMode},
    pb::{self, token_authority_client::TokenAuthorityClient},
};

pub(super) type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// What every task shares.
pub(super) struct Target {
    pub(super) mode: BenchMode,
    pub(super) algorithm: String,
    pub(super) channels: Vec<Channel>,
    pub(super) http: HttpClient,
    pub(super) jwks_uri: hyper::Uri,
    pub(super) healthz_uri: hyper::Uri,
    pub(super) etag: Option<String>,
    pub(super) tokens: Vec<String>,
    pub(super) subject: String,
    pub(super) audience: String,
    /// The caller's `authorization` value, when it proves itself by a token or a secret.
    pub(super) authorization: Option<MetadataValue<Ascii>>,
    /// exchange: the scope and the trust domain asked for (the subject tokens are `tokens`).
    pub(super) scope: String,
    pub(super) trust_domain: String,
    /// The latest forced rotation, in µs since `epoch`: start, and end (`u64::MAX` while it
    /// runs; `start` is `u64::MAX` before the first).
    pub(super) rotation_start: AtomicU64,
    pub(super) rotation_end: AtomicU64,
    pub(super) epoch: Instant,
}

/// What one task saw.
pub(super) struct Tally {
    pub(super) latency: Histogram<u64>,
    /// The requests in flight while a forced rotation ran.
    pub(super) around_rotations: Histogram<u64>,
    pub(super) errors: BTreeMap<String, u64>,
}

impl Target {
    pub(super) fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Whether a request that ran from `started` to `ended` overlapped the latest rotation.
    /// Rotations are a second or more apart and requests milliseconds long, so the latest
    /// one is the only one a request can overlap.
    pub(super) fn overlaps_rotation(&self, started: Instant, ended: Instant) -> bool {
        let start = self.rotation_start.load(Ordering::Acquire);
        let end = self.rotation_end.load(Ordering::Acquire);
        start != u64::MAX && self.micros(started) <= end && self.micros(ended) >= start
    }
}

pub(super) fn with_authorization<T>(
    message: T,
    authorization: Option<&MetadataValue<Ascii>>,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// The `authorization` value of `--bearer-token-file` or `--client-id` with
/// `--client-secret-file`, read once: a run is shorter than any caller token's life.
pub(super) fn caller_authorization(
    args: &BenchArgs,
) -> Result<Option<MetadataValue<Ascii>>, BenchError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|e| BenchError::Prepare(format!("{}: {e}", path.display())))
    };
    let value = match (
        &args.bearer_token_file,
        &args.client_id,
        &args.client_secret_file,
    ) {
        (Some(path), _, _) => format!("Bearer {}", read(path)?),
        (None, Some(id), Some(path)) => {
            use base64::Engine as _;
            let pair = format!("{id}:{}", read(path)?);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        _ => return Ok(None),
    };
    value.parse().map(Some).map_err(|_| {
        BenchError::Prepare("the caller credentials are not a valid header value".into())
    })
}

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

impl Target {
    /// `message` with the caller's credentials, if any.
    pub(super) fn authorized<T>(&self, message: T) -> Request<T> {
        with_authorization(message, self.authorization.as_ref())
    }

    pub(super) async fn request(&self, task: usize, iteration: u64) -> Result<(), String> {
        let mode = match self.mode {
            // 70% verify, 20% issue, 10% JWKS.
            BenchMode::Mixed => match iteration % 10 {
                0..=6 => BenchMode::Verify,
                7 | 8 => BenchMode::Issue,
                _ => BenchMode::Jwks,
            },
            mode => mode,
        };
        let channel = self.channels[task % self.channels.len()].clone();
        match mode {
            BenchMode::Issue | BenchMode::Mixed => {
                let request = pb::IssueTokenRequest {
                    subject: self.subject.clone(),
                    audience: vec![self.audience.clone()],
                    algorithm: self.algorithm.clone(),
                    ..Default::default()
                };
                TokenAuthorityClient::new(channel)
                    .issue_token(self.authorized(request))
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("grpc {:?}", status.code()))
            }
            BenchMode::Verify => {
                let token = self.tokens[(task + iteration as usize) % self.tokens.len()].clone();
                let verdict = TokenAuthorityClient::new(channel)
                    .verify_token(self.authorized(pb::VerifyTokenRequest {
                        token,
                        audience: self.audience.clone(),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|status| format!("grpc {:?}", status.code()))?;
                if verdict.into_inner().valid {
                    Ok(())
                } else {
                    Err("verdict invalid".into())
                }
            }
            BenchMode::Exchange => {
                let request = pb::ExchangeTokenRequest {
                    grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
                    requested_token_type: "urn:ietf:params:oauth:token-type:txn_token".into(),
                    audience: self.trust_domain.clone(),
                    scope: self.scope.clone(),
                    subject_token: self.tokens[(task + iteration as usize) % self.tokens.len()]
                        .clone(),
                    subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
                    ..Default::default()
                };
                TokenAuthorityClient::new(channel)
                    .exchange_token(self.authorized(request))
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("grpc {:?}", status.code()))
            }
            BenchMode::Health => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(self.authorized(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map(|_| ())
                .map_err(|status| format!("grpc {:?}", status.code())),
            BenchMode::Jwks | BenchMode::Jwks304 | BenchMode::Healthz => {
                let uri = if mode == BenchMode::Healthz {
                    &self.healthz_uri
                } else {
                    &self.jwks_uri
                };
                let mut request = hyper::Request::get(uri.clone());
                if let (BenchMode::Jwks304, Some(etag)) = (mode, &self.etag) {
                    request = request.header(hyper::header::IF_NONE_MATCH, etag);
                }
                let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
                let response = self
                    .http
                    .request(request)
                    .await
                    .map_err(|e| format!("http {e}"))?;
                let status = response.status().as_u16();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("http {e}"))?;
                let expected = if mode == BenchMode::Jwks304 && self.etag.is_some() {
                    304
                } else {
                    200
                };
                if status == expected {
                    Ok(())
                } else {
                    Err(format!("http {status}"))
                }
            }
        }
    }
}

pub(super) async fn connect(
    target: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, BenchError> {
    let error = |reason: String| BenchError::Connect {
        target: target.to_owned(),
        reason,
    };
    let mut endpoint = Channel::from_shared(target.to_owned())
        .map_err(|e| error(e.to_string()))?
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| error(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| error(e.to_string()))
}
