//! Transaction Tokens over the real server: an identity provider (another authority whose
//! key the test holds) signs the end users' access tokens; workloads authenticate with
//! client secrets; the policy's `[txn]` table turns the token endpoint on.

mod exchange;
mod http_form;
mod logs;
mod not_a_credential;
mod perf_script;
mod readme;
mod replacement;
mod subject_cache;
mod subject_issuers;

use token_authority::pb;
use tonic::Status;

use crate::{
    callers::{basic, hex, with_auth},
    helpers::{config, now, DataDir, KnownKey, TestServer},
};
use token_authority_jose::crypto;

pub const IDP_ISS: &str = "http://idp.test";
pub const TRUST_DOMAIN: &str = "example.internal";
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TXN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
pub const ACCESS_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const EDGE_SECRET: &str = "edge-secret-0123456789";
pub const ORDERS_SECRET: &str = "orders-secret-0123456789";
pub const BATCH_SECRET: &str = "batch-secret-0123456789";
pub const STRANGER_SECRET: &str = "stranger-secret-0123456789";

/// The identity provider whose access tokens the edge exchanges.
pub struct Idp {
    pub server: TestServer,
    pub key: KnownKey,
    _dir: DataDir,
}

impl Idp {
    pub async fn start() -> Idp {
        let dir = DataDir::new();
        let key = KnownKey::seed(&dir);
        let server = TestServer::start_with(config(&dir, &["--issuer", IDP_ISS])).await;
        Idp {
            server,
            key,
            _dir: dir,
        }
    }

    /// An access token with these claims (JSON members, without the braces) besides iss.
    pub fn token(&self, members: &str) -> String {
        self.key.forge(
            &self.key.header(),
            &format!(r#"{{"iss":"{IDP_ISS}",{members}}}"#),
        )
    }

    /// A good access token of `sub` with `scope`.
    pub fn access_token(&self, sub: &str, scope: &str) -> String {
        let t = now();
        self.token(&format!(
            r#""sub":"{sub}","aud":"api.example","scope":"{scope}","iat":{},"exp":{}"#,
            t - 5,
            t + 600
        ))
    }
}

/// The policy: the IdP trusted for `api.example` tokens; `edge` exchanges for orders
/// scopes, `orders` replaces for narrower ones, `batch` gets one-second tokens, `stranger`
/// is a client no `[[txn_rule]]` names.
pub fn policy(idp_jwks: &str) -> String {
    let secret = |s: &str| hex(&crypto::sha256(s.as_bytes()));
    format!(
        r#"
[[issuer]]
name = "idp"
issuer = "{IDP_ISS}"
jwks_uri = "{idp_jwks}"
audiences = ["api.example"]
max_token_lifetime = "1h"

[[client]]
id = "edge"
secret_sha256 = "{}"

[[client]]
id = "orders"
secret_sha256 = "{}"

[[client]]
id = "batch"
secret_sha256 = "{}"

[[client]]
id = "stranger"
secret_sha256 = "{}"

# Access tokens of this authority, to show they are not Txn-Tokens (none can be for the
# trust domain: the policy refuses a rule naming it).
[[rule]]
callers = ["client:batch"]
subjects = ["svc"]
audiences = ["ledger"]

[txn]
trust_domain = "{TRUST_DOMAIN}"

[[txn_rule]]
callers = ["client:edge"]
scopes = ["orders.read", "orders.write"]
context = ["order_id"]
max_ttl = "5m"

[[txn_rule]]
callers = ["client:orders"]
scopes = ["orders.read", "orders.write"]
context = ["amount", "order_id"]

[[txn_rule]]
callers = ["client:batch"]
scopes = ["orders.read"]
max_ttl = "1s"
"#,
        secret(EDGE_SECRET),
        secret(ORDERS_SECRET),
        secret(BATCH_SECRET),
        secret(STRANGER_SECRET),
    )
}

/// Creates `dir` and writes `policy` (trusting `idp`) beside it; returns the file's path
/// for `--policy-file`.
pub fn write_policy(dir: &DataDir, idp: &Idp) -> String {
    dir.create();
    let path = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&path, policy(&idp.server.url("/.well-known/jwks.json"))).unwrap();
    path.display().to_string()
}

/// The IdP, and the authority under its policy with an audit log, leeway 0 unless told
/// otherwise (so a one-second token is expired two seconds later).
pub struct Fixture {
    pub idp: Idp,
    pub server: TestServer,
    pub audit_log: std::path::PathBuf,
    _dir: DataDir,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with_leeway("0s").await
    }

    /// The same with another `--leeway`.
    pub async fn start_with_leeway(leeway: &str) -> Fixture {
        let idp = Idp::start().await;
        let dir = DataDir::new();
        let policy_arg = write_policy(&dir, &idp);
        let audit_log = dir.path.parent().unwrap().join("audit.log");
        let audit_arg = audit_log.display().to_string();
        let server = TestServer::start_with(config(
            &dir,
            &[
                "--policy-file",
                &policy_arg,
                "--audit-log",
                &audit_arg,
                "--leeway",
                leeway,
            ],
        ))
        .await;
        Fixture {
            idp,
            server,
            audit_log,
            _dir: dir,
        }
    }
}

pub fn edge() -> String {
    basic("edge", EDGE_SECRET)
}

pub fn orders() -> String {
    basic("orders", ORDERS_SECRET)
}

/// A request for `scope` on `subject_token` (an access token).
pub fn ask(scope: &str, subject_token: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: GRANT.into(),
        requested_token_type: TXN_TYPE.into(),
        audience: TRUST_DOMAIN.into(),
        scope: scope.into(),
        subject_token: subject_token.into(),
        subject_token_type: ACCESS_TYPE.into(),
        request_context: String::new(),
        request_details: String::new(),
    }
}

pub async fn exchange_as(
    server: &TestServer,
    authorization: Option<&str>,
    request: pb::ExchangeTokenRequest,
) -> Result<pb::ExchangeTokenResponse, Status> {
    server
        .client
        .clone()
        .exchange_token(with_auth(request, authorization))
        .await
        .map(tonic::Response::into_inner)
}

/// An access token of the authority under test (IssueToken), signed by the same key as
/// its Txn-Tokens.
pub async fn access_token(server: &TestServer) -> String {
    crate::callers::issue_as(
        server,
        Some(&basic("batch", BATCH_SECRET)),
        crate::callers::ask("svc", &["ledger"], None, ""),
    )
    .await
    .unwrap()
    .token
}

/// VerifyToken's verdict on `token` as a Txn-Token (`txn`) or as an access token.
pub async fn verify_as(server: &TestServer, token: &str, txn: bool) -> pb::VerifyTokenResponse {
    let expected_type = if txn {
        pb::TokenType::Txn
    } else {
        pb::TokenType::Access
    };
    server
        .client
        .clone()
        .verify_token(pb::VerifyTokenRequest {
            token: token.into(),
            audience: String::new(),
            expected_type: expected_type as i32,
        })
        .await
        .unwrap()
        .into_inner()
}
