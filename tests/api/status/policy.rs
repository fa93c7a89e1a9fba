//! A rule can require a status for its tokens (however short) or forbid one (however
//! long); without `status`, `--status-min-ttl` decides. `policy check` names the choice and
//! refuses any other value.

use super::{list_id, reference};
use token_authority_jose::crypto;

use crate::{
    callers::{ask, basic, hex, issue_as, start_with_policy},
    helpers::DataDir,
};

fn secret(text: &str) -> String {
    hex(&crypto::sha256(text.as_bytes()))
}

const ALWAYS: &str = "always-secret-0123456789";
const NEVER: &str = "never-secret-0123456789";
const DEFAULT: &str = "default-secret-0123456789";

fn policy() -> String {
    format!(
        r#"
[[client]]
id = "always"
secret_sha256 = "{}"

[[client]]
id = "never"
secret_sha256 = "{}"

[[client]]
id = "default"
secret_sha256 = "{}"

[[rule]]
callers = ["client:always"]
subjects = ["svc"]
audiences = ["ledger"]
status = "required"

[[rule]]
callers = ["client:never"]
subjects = ["svc"]
audiences = ["ledger"]
status = "forbidden"

[[rule]]
callers = ["client:default"]
subjects = ["svc"]
audiences = ["ledger"]
"#,
        secret(ALWAYS),
        secret(NEVER),
        secret(DEFAULT),
    )
}

#[tokio::test]
async fn rules_require_or_forbid_a_status() {
    let dir = DataDir::new();
    let (server, _) = start_with_policy(&dir, &policy(), &[]).await;
    let issue = |id: &'static str, secret: &'static str, ttl: i64| {
        let server = &server;
        async move {
            issue_as(
                server,
                Some(&basic(id, secret)),
                ask("svc", &["ledger"], Some(ttl), ""),
            )
            .await
            .unwrap()
        }
    };
    // Required: even a one-minute token has one.
    let short = issue("always", ALWAYS, 60).await;
    assert!(reference(&short.token).is_some());
    // Forbidden: not even a day-long token.
    let long = issue("never", NEVER, 86_400).await;
    assert_eq!(reference(&long.token), None);
    // Neither: by --status-min-ttl (10 minutes).
    assert_eq!(reference(&issue("default", DEFAULT, 60).await.token), None);
    let default_long = issue("default", DEFAULT, 3600).await;
    let (a, b) = (
        reference(&short.token).unwrap(),
        reference(&default_long.token).unwrap(),
    );
    assert_eq!(list_id(&a), list_id(&b));
    assert_ne!(a.idx, b.idx);
    server.stop().await;
}

#[test]
fn policy_check_names_the_choice_and_refuses_others() {
    let (code, stdout, stderr) = crate::policy_command::check(&policy());
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert!(
        stdout.contains("  rule[0]: max_ttl server's, admin false, bind none, status required\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  rule[1]: max_ttl server's, admin false, bind none, status forbidden\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  rule[2]: max_ttl server's, admin false, bind none\n"),
        "{stdout}"
    );
    let bad = policy().replace("status = \"forbidden\"", "status = \"sometimes\"");
    let (code, stdout, stderr) = crate::policy_command::check(&bad);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(r#"rule[1].status: "sometimes" is not a choice; use "required" or "forbidden" (or leave it out: by --status-min-ttl)"#),
        "{stderr}"
    );
}
