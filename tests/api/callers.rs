//! Callers and policy over the real server: a second authority instance serves as the
//! trusted "cluster" issuer over loopback HTTP; the test holds its signing key to forge
//! hostile caller tokens. Every refused case asserts the exact code and message.

use base64::Engine as _;
use token_authority::pb;
use token_authority_jose::{b64, crypto};
use tonic::{metadata::MetadataValue, Code, Request, Status};

use crate::helpers::{admin, config, now, DataDir, KnownKey, TestServer, ADMIN_TOKEN};

pub const CLUSTER_ISS: &str = "http://cluster.test";
pub const PAYMENTS_SA: &str = "system:serviceaccount:payments:api";
pub const GATEWAY_SA: &str = "system:serviceaccount:gateway:api";
pub const BATCH_SECRET: &str = "batch-secret-0123456789";
pub const OPS_SECRET: &str = "ops-secret-9876543210";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// The trusted issuer: another authority whose signing key the test holds.
pub struct Issuer {
    pub server: TestServer,
    pub key: KnownKey,
    _dir: DataDir,
}

impl Issuer {
    pub async fn start() -> Issuer {
        let dir = DataDir::new();
        let key = KnownKey::seed(&dir);
        let server = TestServer::start_with(config(&dir, &["--issuer", CLUSTER_ISS])).await;
        Issuer {
            server,
            key,
            _dir: dir,
        }
    }

    pub fn jwks_uri(&self) -> String {
        self.server.url("/.well-known/jwks.json")
    }

    /// A caller token with this payload, signed by the issuer's key.
    pub fn token(&self, sub: &str, aud: &str, iat: u64, exp: u64) -> String {
        self.key.forge(
            &self.key.header(),
            &format!(
                r#"{{"iss":"{CLUSTER_ISS}","sub":"{sub}","aud":"{aud}","iat":{iat},"exp":{exp}}}"#
            ),
        )
    }

    /// A good caller token for `sub`, as a projected service-account token would be.
    pub fn good(&self, sub: &str) -> String {
        self.token(sub, "token-authority", now() - 5, now() + 600)
    }
}

/// The policy the tests run under.
pub fn policy_text(jwks_uri: &str) -> String {
    let batch = hex(&crypto::sha256(BATCH_SECRET.as_bytes()));
    let ops = hex(&crypto::sha256(OPS_SECRET.as_bytes()));
    format!(
        r#"
[[issuer]]
name = "cluster"
issuer = "{CLUSTER_ISS}"
jwks_uri = "{jwks_uri}"
audiences = ["token-authority"]
max_token_lifetime = "1h"
subjects = ["system:serviceaccount:*"]

[[client]]
id = "legacy-batch"
secret_sha256 = "{batch}"

[[client]]
id = "ops"
secret_sha256 = "{ops}"

[[rule]]
callers = ["system:serviceaccount:payments:*", "client:legacy-batch"]
audiences = ["ledger", "orders"]
max_ttl = "15m"
claims = {{ tenant = "payments" }}
allow_claims = ["scope"]

[[rule]]
callers = ["{GATEWAY_SA}"]
subjects = ["user:*"]
audiences = ["orders"]

[[rule]]
callers = ["client:ops"]
subjects = ["nobody"]
admin = true
"#
    )
}

/// The authority under test, with the policy (and an audit log) in `dir`'s parent.
pub async fn start_with_policy(
    dir: &DataDir,
    policy: &str,
    extra: &[&str],
) -> (TestServer, std::path::PathBuf) {
    dir.create();
    let policy_path = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let policy_arg = policy_path.display().to_string();
    let mut args = vec!["--policy-file", policy_arg.as_str(), "--default-ttl", "1h"];
    args.extend_from_slice(extra);
    (
        TestServer::start_with(config(dir, &args)).await,
        policy_path,
    )
}

pub fn with_auth<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        let value: MetadataValue<_> = value.parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn ask(
    subject: &str,
    audience: &[&str],
    ttl: Option<i64>,
    claims: &str,
) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        subject: subject.into(),
        audience: audience.iter().map(|a| a.to_string()).collect(),
        ttl: ttl.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        claims_json: claims.into(),
        algorithm: String::new(),
    }
}

pub async fn issue_as(
    server: &TestServer,
    authorization: Option<&str>,
    request: pb::IssueTokenRequest,
) -> Result<pb::IssueTokenResponse, Status> {
    server
        .client
        .clone()
        .issue_token(with_auth(request, authorization))
        .await
        .map(tonic::Response::into_inner)
}

pub fn payload(token: &str) -> serde_json::Value {
    let segment = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64::decode(segment).unwrap()).unwrap()
}

#[tokio::test]
async fn callers_table_each_refusal_with_its_code_and_message() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let t = now();
    let bearer = |token: String| format!("Bearer {token}");
    let good = bearer(issuer.good(PAYMENTS_SA));
    let self_ask = || ask(PAYMENTS_SA, &["ledger"], None, "");

    let other_issuer = issuer.key.forge(
        &issuer.key.header(),
        &format!(r#"{{"iss":"https://elsewhere.test","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{t},"exp":{}}}"#, t + 60),
    );
    let unknown_kid = issuer.key.forge(
        r#"{"alg":"RS256","kid":"not-a-key-of-the-issuer","typ":"JWT"}"#,
        &format!(r#"{{"iss":"{CLUSTER_ISS}","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{t},"exp":{}}}"#, t + 60),
    );
    let alg_none = {
        let good = issuer.good(PAYMENTS_SA);
        let payload = good.split('.').nth(1).unwrap().to_owned();
        format!(
            "{}.{payload}.",
            b64::encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.key.kid))
        )
    };
    let cases: Vec<(&str, Option<String>, pb::IssueTokenRequest, Code, String)> = vec![
        ("no credentials", None, self_ask(), Code::Unauthenticated,
            "IssueToken needs credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`".into()),
        ("unknown scheme", Some("Negotiate abc".into()), self_ask(), Code::Unauthenticated,
            "authorization: unsupported scheme; use Bearer or Basic".into()),
        ("bearer that is no JWT", Some("Bearer not-a-jwt".into()), self_ask(), Code::Unauthenticated,
            "bearer token: not the admin token, nor a JWT from a trusted issuer".into()),
        ("caller JWT for another audience", Some(bearer(issuer.token(PAYMENTS_SA, "some-other-service", t, t + 60))), self_ask(), Code::Unauthenticated,
            "bearer token: aud does not contain the expected audience".into()),
        ("expired caller JWT", Some(bearer(issuer.token(PAYMENTS_SA, "token-authority", t - 3000, t - 120))), self_ask(), Code::Unauthenticated,
            "bearer token: the token has expired".into()),
        ("caller JWT living two hours", Some(bearer(issuer.token(PAYMENTS_SA, "token-authority", t - 5, t + 7200))), self_ask(), Code::Unauthenticated,
            "bearer token: the token lives longer than 3600s (exp - iat)".into()),
        ("caller JWT of an untrusted issuer", Some(bearer(other_issuer)), self_ask(), Code::Unauthenticated,
            "bearer token: its issuer is not trusted".into()),
        ("caller JWT of an unknown kid", Some(bearer(unknown_kid)), self_ask(), Code::Unauthenticated,
            "bearer token: its kid is not a key of the issuer's JWKS".into()),
        ("caller JWT with alg none", Some(bearer(alg_none)), self_ask(), Code::Unauthenticated,
            "bearer token: the header's alg is not RS256, the algorithm of this key".into()),
        ("caller JWT naming itself a client", Some(bearer(issuer.good("client:legacy-batch"))), ask("client:legacy-batch", &["ledger"], None, ""), Code::Unauthenticated,
            "caller name starts with client:, which only client secrets may prove".into()),
        ("caller JWT asserting a name its issuer may not", Some(bearer(issuer.good("spiffe://prod.example/ns/payments/sa/api"))), ask("spiffe://prod.example/ns/payments/sa/api", &["ledger"], None, ""), Code::Unauthenticated,
            "bearer token: its sub is not one the issuer \"cluster\" may assert (its subjects)".into()),
        ("caller JWT whose sub holds a line separator", Some(bearer(issuer.good("system:serviceaccount:payments:api\u{2028}forged"))), self_ask(), Code::Unauthenticated,
            "caller name contains a control, format or line separator character".into()),
        ("caller JWT whose sub holds a format character", Some(bearer(issuer.good("system:serviceaccount:payments:a\u{200b}pi"))), self_ask(), Code::Unauthenticated,
            "caller name contains a control, format or line separator character".into()),
        ("wrong client secret", Some(basic("legacy-batch", "guess")), ask("client:legacy-batch", &["ledger"], None, ""), Code::Unauthenticated,
            "the client id or secret is not valid".into()),
        ("unknown client", Some(basic("nobody", BATCH_SECRET)), ask("client:nobody", &["ledger"], None, ""), Code::Unauthenticated,
            "the client id or secret is not valid".into()),
        ("admin token asking for a token", Some(format!("Bearer {ADMIN_TOKEN}")), self_ask(), Code::PermissionDenied,
            "the admin token is for admin RPCs; IssueToken needs a caller the policy names".into()),
        ("good caller, another subject", Some(good.clone()), ask("system:serviceaccount:payments:other", &["ledger"], None, ""), Code::PermissionDenied,
            format!("subject: \"system:serviceaccount:payments:other\" is not allowed for caller \"{PAYMENTS_SA}\"")),
        ("good caller, an audience outside its rule", Some(good.clone()), ask(PAYMENTS_SA, &["ledger", "payroll"], None, ""), Code::PermissionDenied,
            format!("audience: \"payroll\" is not allowed for caller \"{PAYMENTS_SA}\"")),
        ("good caller, no audience", Some(good.clone()), ask(PAYMENTS_SA, &[], None, ""), Code::PermissionDenied,
            "audience: at least one audience is required".into()),
        ("good caller, ttl above its rule", Some(good.clone()), ask(PAYMENTS_SA, &["ledger"], Some(3600), ""), Code::PermissionDenied,
            format!("ttl: 3600s is above the 900s allowed for caller \"{PAYMENTS_SA}\"")),
        ("good caller, a claim it may not set", Some(good.clone()), ask(PAYMENTS_SA, &["ledger"], None, r#"{"role":"admin"}"#), Code::PermissionDenied,
            format!("claims_json: caller \"{PAYMENTS_SA}\" may not set the claim \"role\"")),
        ("good caller setting act", Some(good.clone()), ask(PAYMENTS_SA, &["ledger"], None, r#"{"act":{"sub":"root"}}"#), Code::InvalidArgument,
            "claims_json: sets the reserved claim \"act\"; the authority sets act and cnf from the caller's identity".into()),
        ("good caller setting a Txn-Token claim", Some(good.clone()), ask(PAYMENTS_SA, &["ledger"], None, r#"{"req_wl":"client:edge"}"#), Code::InvalidArgument,
            "claims_json: sets the reserved claim \"req_wl\"; txn, tctx, rctx and req_wl are Txn-Token claims, which only the token endpoint issues".into()),
        ("caller no rule covers", Some(bearer(issuer.good("system:serviceaccount:billing:api"))), ask("system:serviceaccount:billing:api", &["ledger"], None, ""), Code::PermissionDenied,
            "caller \"system:serviceaccount:billing:api\" is not allowed to issue tokens".into()),
    ];
    for (name, authorization, request, code, message) in cases {
        let status = issue_as(&server, authorization.as_deref(), request)
            .await
            .expect_err(name);
        assert_eq!(
            (status.code(), status.message()),
            (code, message.as_str()),
            "{name}"
        );
    }
    issuer.server.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn allowed_callers_get_their_subject_audiences_act_and_fixed_claims() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;

    // A service-account caller, for itself, with a claim its rule frees.
    let own = format!("Bearer {}", issuer.good(PAYMENTS_SA));
    let issued = issue_as(
        &server,
        Some(&own),
        ask(PAYMENTS_SA, &["ledger"], Some(300), r#"{"scope":"read"}"#),
    )
    .await
    .unwrap();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], PAYMENTS_SA);
    assert_eq!(claims["aud"], "ledger");
    assert_eq!(claims["tenant"], "payments");
    assert_eq!(claims["scope"], "read");
    assert!(
        claims.get("act").is_none(),
        "no act for a token of the caller itself"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    let verified = server.verify(&issued.token, "ledger").await;
    assert!(verified.valid, "{}", verified.detail);
    let returned: serde_json::Value = serde_json::from_str(&verified.claims_json).unwrap();
    assert_eq!(returned["tenant"], "payments");

    // A client-secret caller with no ttl: the server default (1h) capped at its rule's 15m.
    let issued = issue_as(
        &server,
        Some(&basic("legacy-batch", BATCH_SECRET)),
        ask("client:legacy-batch", &["ledger", "orders"], None, ""),
    )
    .await
    .unwrap();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], "client:legacy-batch");
    assert_eq!(claims["aud"], serde_json::json!(["ledger", "orders"]));
    assert_eq!(claims["tenant"], "payments");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );

    // A gateway acting for a user: act names the caller (RFC 8693), and VerifyToken says so.
    let gateway = format!("Bearer {}", issuer.good(GATEWAY_SA));
    let issued = issue_as(
        &server,
        Some(&gateway),
        ask("user:alice", &["orders"], None, ""),
    )
    .await
    .unwrap();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["act"], serde_json::json!({ "sub": GATEWAY_SA }));
    assert!(claims.get("tenant").is_none());
    let verified = server.verify(&issued.token, "orders").await;
    assert!(verified.valid);
    assert_eq!(verified.subject, "user:alice");
    let returned: serde_json::Value = serde_json::from_str(&verified.claims_json).unwrap();
    assert_eq!(returned["act"]["sub"], GATEWAY_SA);

    // A real token of the issuer (minted by its own IssueToken, not forged) works as well.
    let minted = issuer
        .server
        .issue(PAYMENTS_SA, &["token-authority"])
        .await
        .token;
    issue_as(
        &server,
        Some(&format!("Bearer {minted}")),
        ask(PAYMENTS_SA, &["orders"], None, ""),
    )
    .await
    .unwrap();

    issuer.server.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn admin_rpcs_take_the_admin_token_or_an_admin_rule() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let list = |authorization: Option<String>| {
        let mut client = server.client.clone();
        async move {
            client
                .list_keys(with_auth(pb::ListKeysRequest {}, authorization.as_deref()))
                .await
                .map(|_| ())
        }
    };
    assert!(server
        .client
        .clone()
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .is_ok());
    list(Some(basic("ops", OPS_SECRET))).await.unwrap();
    let cases = [
        (
            None,
            Code::Unauthenticated,
            "admin RPCs need metadata `authorization: Bearer <admin token>`".to_owned(),
        ),
        (
            Some(format!("Bearer {}", issuer.good(PAYMENTS_SA))),
            Code::PermissionDenied,
            format!("caller \"{PAYMENTS_SA}\" may not call admin RPCs"),
        ),
        (
            Some(basic("ops", "wrong")),
            Code::Unauthenticated,
            "the client id or secret is not valid".into(),
        ),
    ];
    for (authorization, code, message) in cases {
        let status = list(authorization.clone()).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (code, message.as_str()),
            "{authorization:?}"
        );
    }
    // The ops client may administer but not get tokens it has no rule for.
    let status = issue_as(
        &server,
        Some(&basic("ops", OPS_SECRET)),
        ask("client:ops", &["ledger"], None, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "subject: \"client:ops\" is not allowed for caller \"client:ops\""
        )
    );
    issuer.server.stop().await;
    server.stop().await;
}

/// A caller token signed by a key the issuer published after the authority cached its
/// JWKS: the unknown kid triggers one refetch, and the token then works.
#[tokio::test]
async fn a_new_issuer_key_is_fetched_when_a_token_names_it() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let before = issue_as(
        &server,
        Some(&format!("Bearer {}", issuer.good(PAYMENTS_SA))),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await;
    assert!(before.is_ok());
    // The issuer rotates twice: the second time a key generated after the authority
    // fetched the JWKS signs.
    let cached = crate::helpers::kids(&issuer.server.http_jwks().await);
    issuer.server.rotate().await;
    let rotated = issuer.server.rotate().await;
    assert!(!cached.contains(&rotated.current_key_id));
    let minted = issuer.server.issue(PAYMENTS_SA, &["token-authority"]).await;
    assert_eq!(minted.key_id, rotated.current_key_id);
    issue_as(
        &server,
        Some(&format!("Bearer {}", minted.token)),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .unwrap();
    issuer.server.stop().await;
    server.stop().await;
}

/// With no policy, a gRPC listener on every interface (what a pod binds) is not loopback:
/// only the admin token may issue; the default loopback listener stays open.
#[tokio::test]
async fn without_a_policy_a_non_loopback_listener_issues_only_for_the_admin_token() {
    let dir = DataDir::new();
    // What a pod behind a mesh that terminates mTLS runs: every interface, plaintext.
    let mut every_interface = config(&dir, &["--allow-plaintext"]);
    every_interface.grpc_listen = "0.0.0.0:0".parse().unwrap();
    let server = TestServer::start_with(every_interface).await;
    assert!(server.grpc_addr.ip().is_unspecified());
    let request = || ask("svc", &["api"], None, "");
    let cases = [
        (None, Code::Unauthenticated, "IssueToken needs metadata `authorization: Bearer <admin token>`: there is no --policy-file and the gRPC listener is not loopback"),
        (Some("Bearer not-the-admin-token".to_owned()), Code::Unauthenticated, "the admin token is not valid"),
        (Some(basic("legacy-batch", "x")), Code::Unauthenticated, "the client id or secret is not valid"),
    ];
    for (authorization, code, message) in cases {
        let status = issue_as(&server, authorization.as_deref(), request())
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "{authorization:?}"
        );
    }
    let issued = issue_as(&server, Some(&format!("Bearer {ADMIN_TOKEN}")), request())
        .await
        .unwrap();
    assert_eq!(payload(&issued.token)["sub"], "svc");
    server.stop().await;

    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    assert!(server.grpc_addr.ip().is_loopback());
    issue_as(&server, None, request()).await.unwrap();
    server.stop().await;
}

/// An issuer whose keys come from a file (an air-gapped cluster's exported JWKS): the same
/// verification, no network.
#[tokio::test]
async fn an_issuer_read_from_a_jwks_file() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    dir.create();
    let jwks_path = dir.path.parent().unwrap().join("cluster-jwks.json");
    std::fs::write(&jwks_path, issuer.server.http_jwks().await.to_string()).unwrap();
    let policy = policy_text("http://unused.invalid").replace(
        "jwks_uri = \"http://unused.invalid\"",
        &format!("jwks_file = \"{}\"", jwks_path.display()),
    );
    assert!(policy.contains("jwks_file"));
    let (server, _) = start_with_policy(&dir, &policy, &[]).await;
    // The issuer is stopped: nothing but the file can vouch for the token.
    let token = issuer.good(PAYMENTS_SA);
    issuer.server.stop().await;
    let issued = issue_as(
        &server,
        Some(&format!("Bearer {token}")),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .unwrap();
    assert_eq!(payload(&issued.token)["sub"], PAYMENTS_SA);
    server.stop().await;
}

/// An issuer that goes down: a refetch (caused by an unknown kid) fails, is counted, and
/// the last good keys stay, so its callers keep working.
#[tokio::test]
async fn an_issuer_that_is_down_keeps_its_last_good_keys() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let good = issuer.good(PAYMENTS_SA);
    let unknown_kid = issuer.key.forge(
        r#"{"alg":"RS256","kid":"rotated-in-while-down","typ":"JWT"}"#,
        &format!(
            r#"{{"iss":"{CLUSTER_ISS}","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{},"exp":{}}}"#,
            now(),
            now() + 60
        ),
    );
    issuer.server.stop().await;
    let status = issue_as(
        &server,
        Some(&format!("Bearer {unknown_kid}")),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status.message(),
        "bearer token: its kid is not a key of the issuer's JWKS"
    );
    assert_eq!(
        crate::helpers::metric(
            &server,
            r#"token_authority_caller_jwks_fetch_failures_total{issuer="cluster"}"#
        )
        .await,
        1.0
    );
    issue_as(
        &server,
        Some(&format!("Bearer {good}")),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .unwrap();
    server.stop().await;
}

/// Several `authorization` headers are refused whatever their order: which one counts would
/// be a guess an attacker could steer.
#[tokio::test]
async fn several_authorization_headers_are_refused() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let good = basic("legacy-batch", BATCH_SECRET);
    let admin_token = format!("Bearer {ADMIN_TOKEN}");
    let several = |values: &[&str]| {
        let mut request = Request::new(ask("client:legacy-batch", &["ledger"], None, ""));
        for value in values {
            let value: MetadataValue<_> = value.parse().unwrap();
            request.metadata_mut().append("authorization", value);
        }
        request
    };
    let message = "authorization: present one credential: the call carries more than one authorization header";
    for values in [
        [good.as_str(), "Bearer garbage"],
        ["Bearer garbage", good.as_str()],
        [good.as_str(), good.as_str()],
    ] {
        let status = server
            .client
            .clone()
            .issue_token(several(&values))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message),
            "{values:?}"
        );
    }
    // The admin RPCs too, even when both are the admin token.
    let mut request = admin(pb::ListKeysRequest {});
    request
        .metadata_mut()
        .append("authorization", admin_token.parse().unwrap());
    let status = server.client.clone().list_keys(request).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, message)
    );
    // One header still works.
    issue_as(
        &server,
        Some(&good),
        ask("client:legacy-batch", &["ledger"], None, ""),
    )
    .await
    .unwrap();
    issuer.server.stop().await;
    server.stop().await;
}
