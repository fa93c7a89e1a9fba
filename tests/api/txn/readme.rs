//! The README's Transaction Token section as written: its policy passes `policy check`, and
//! its curl command, run by bash against a real server, gets the answer it shows.

use std::process::Command;

use serde_json::json;

use super::{Fixture, EDGE_SECRET, TRUST_DOMAIN};
use crate::{callers::payload, policy_command::check};

fn section() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Transaction Tokens").unwrap();
    let end = start + readme[start..].find("\n## Revoking one token").unwrap();
    readme[start..end].to_owned()
}

fn block(text: &str, after: &str, fence: &str) -> String {
    let from = &text[text.find(after).unwrap()..];
    let start = from.find(fence).unwrap() + fence.len();
    from[start..start + from[start..].find("```").unwrap()].to_owned()
}

#[test]
fn the_readme_txn_policy_checks() {
    let policy = block(&section(), "### The policy: who may ask", "```toml\n");
    let (code, stdout, stderr) = check(&policy);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert!(
        stdout.contains(
            "  txn (draft-ietf-oauth-transaction-tokens-10): trust domain example.internal, ttl 60s, 2 txn_rule(s)\n"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_exchange_gets_what_it_shows() {
    let fixture = Fixture::start().await;
    let command = block(&section(), "### Asking for one", "```sh\n");
    assert!(command.contains("audience=example.internal"));
    let access_token = fixture
        .idp
        .access_token("user-1234", "orders.read orders.write");
    let tts = fixture.server.url("");
    let output = tokio::task::block_in_place(|| {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .env("TTS", tts.trim_end_matches('/'))
            .env("EDGE_SECRET", EDGE_SECRET)
            .env("ACCESS_TOKEN", &access_token)
            .output()
            .unwrap()
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let shown = command.lines().last().unwrap().trim_start_matches("# ");
    let shown: serde_json::Value = serde_json::from_str(shown).unwrap();
    let keys = |value: &serde_json::Value| -> Vec<String> {
        value.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(keys(&answer), keys(&shown));
    for field in ["expires_in", "issued_token_type", "token_type"] {
        assert_eq!(answer[field], shown[field], "{field}");
    }
    let claims = payload(answer["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], TRUST_DOMAIN);
    assert_eq!(claims["sub"], "user-1234");
    assert_eq!(claims["req_wl"], "client:edge");
    assert_eq!(claims["tctx"], json!({"order_id": "o-42"}));
    assert_eq!(
        claims["rctx"],
        json!({"req_ip": "69.151.72.123", "authn": "urn:ietf:rfc:6749"})
    );
}
