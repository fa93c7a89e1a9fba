//! `[txn] subject_issuers`: only the named issuers' tokens are subject tokens, and with
//! several, a `sub` two of them may assert is refused, so a Txn-Token's `sub` names one
//! subject in the trust domain (the draft's MUST): a partner's "alice" never becomes the
//! company's.

use tonic::Code;

use super::{ask, edge, exchange_as, EDGE_SECRET, TRUST_DOMAIN};
use crate::{
    callers::{hex, payload},
    helpers::{config, now, DataDir, KnownKey, TestServer},
};
use token_authority_jose::crypto;

/// An issuer known by its key alone: a JWKS file to trust it by, and tokens forged with it.
struct Issuer {
    iss: &'static str,
    key: KnownKey,
    jwks: std::path::PathBuf,
    _dir: DataDir,
}

impl Issuer {
    fn new(iss: &'static str) -> Issuer {
        let dir = DataDir::new();
        let key = KnownKey::seed(&dir);
        let jwks = dir.path.with_extension("jwks.json");
        key.write_jwks(&jwks);
        Issuer {
            iss,
            key,
            jwks,
            _dir: dir,
        }
    }

    fn token(&self, sub: &str) -> String {
        let t = now();
        self.key.forge(
            &self.key.header(),
            &format!(
                r#"{{"iss":"{}","sub":"{sub}","aud":"api.example","scope":"orders.read","iat":{},"exp":{}}}"#,
                self.iss,
                t - 5,
                t + 600
            ),
        )
    }
}

async fn server(idp: &Issuer, partner: &Issuer, subject_issuers: &str) -> (TestServer, DataDir) {
    let dir = DataDir::new();
    let policy = format!(
        r#"
[[issuer]]
name = "idp"
issuer = "{}"
jwks_file = "{}"
audiences = ["api.example"]
subjects = ["user-*"]

[[issuer]]
name = "partner"
issuer = "{}"
jwks_file = "{}"
audiences = ["api.example"]
subjects = ["partner-*", "user-9*"]

[[client]]
id = "edge"
secret_sha256 = "{}"

[txn]
trust_domain = "{TRUST_DOMAIN}"
subject_issuers = {subject_issuers}

[[txn_rule]]
callers = ["client:edge"]
scopes = ["orders.read"]
"#,
        idp.iss,
        idp.jwks.display(),
        partner.iss,
        partner.jwks.display(),
        hex(&crypto::sha256(EDGE_SECRET.as_bytes())),
    );
    let path = dir.path.with_extension("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let arg = path.display().to_string();
    let server = TestServer::start_with(config(&dir, &["--policy-file", &arg])).await;
    (server, dir)
}

#[tokio::test]
async fn a_sub_names_one_subject_in_the_trust_domain() {
    let idp = Issuer::new("https://login.example.com");
    let partner = Issuer::new("https://partner.example.net");
    let refused = |reason: &str| {
        Err((
            Code::InvalidArgument,
            format!("invalid_grant: the subject token is refused: {reason}"),
        ))
    };
    let overlap = "its sub is one the [[issuer]] \"partner\" may assert too, so it would not name one subject in the trust domain";
    let not_named = "its issuer \"partner\" is not one of [txn] subject_issuers";
    type Case<'a> = (&'a Issuer, &'a str, Result<&'a str, (Code, String)>);
    let cases: Vec<(&str, Vec<Case>)> = vec![
        (
            r#"["idp", "partner"]"#,
            vec![
                (&idp, "user-1", Ok("user-1")),
                (&partner, "partner-1", Ok("partner-1")),
                // Both may assert user-90: whose user it is cannot be told.
                (&idp, "user-90", refused(overlap)),
            ],
        ),
        (
            r#"["idp"]"#,
            vec![
                (&idp, "user-90", Ok("user-90")),
                (&partner, "partner-1", refused(not_named)),
            ],
        ),
    ];
    for (names, asked) in cases {
        let (server, _dir) = server(&idp, &partner, names).await;
        for (issuer, sub, expected) in asked {
            let answer = exchange_as(
                &server,
                Some(&edge()),
                ask("orders.read", &issuer.token(sub)),
            )
            .await
            .map(|answer| {
                payload(&answer.access_token)["sub"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .map_err(|status| (status.code(), status.message().to_owned()));
            assert_eq!(
                answer,
                expected.map(str::to_owned),
                "{names}: {} {sub}",
                issuer.iss
            );
        }
        server.stop().await;
    }
}

/// `policy check` warns where several issuers supply subject tokens because none are named.
#[test]
fn policy_check_warns_when_every_issuer_supplies_subject_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let issuer = |name: &str| {
        format!(
            "[[issuer]]\nname = \"{name}\"\nissuer = \"https://{name}.example\"\njwks_file = \"{}\"\naudiences = [\"a\"]\nsubjects = [\"{name}-*\"]\n",
            jwks.display()
        )
    };
    let warning = "  warning: [txn]: all 2 [[issuer]]s supply subject tokens, and a sub two of them assert would name two subjects in one trust domain; name those that do in [txn] subject_issuers\n";
    for (text, warned) in [
        (
            format!(
                "{}{}[txn]\ntrust_domain = \"d\"\n",
                issuer("a"),
                issuer("b")
            ),
            true,
        ),
        (
            format!(
                "{}{}[txn]\ntrust_domain = \"d\"\nsubject_issuers = [\"a\", \"b\"]\n",
                issuer("a"),
                issuer("b")
            ),
            false,
        ),
        (
            format!("{}[txn]\ntrust_domain = \"d\"\n", issuer("a")),
            false,
        ),
        (format!("{}{}", issuer("a"), issuer("b")), false),
    ] {
        let (code, stdout, stderr) = crate::policy_command::check(&text);
        assert_eq!((code, stderr.as_str()), (0, ""), "{text}\n{stdout}");
        assert_eq!(stdout.contains(warning), warned, "{text}\n{stdout}");
    }
}
