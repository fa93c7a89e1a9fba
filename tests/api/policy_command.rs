//! `token-authority policy check FILE`: what an operator runs before deploying a policy.
//! Exit 0 and a summary (trying each issuer's JWKS) when good; exit 1 and every problem,
//! each naming its table and field, when not.

use std::process::Command;

use crate::{
    binary::BIN,
    callers::{policy_text, Issuer},
};

pub fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let shown =
        |bytes: &[u8]| String::from_utf8_lossy(bytes).replace(&path.display().to_string(), "FILE");
    (
        output.status.code().unwrap(),
        shown(&output.stdout),
        shown(&output.stderr),
    )
}

#[tokio::test]
async fn policy_check_table() {
    let issuer = Issuer::start().await;
    // The command runs off this runtime, which serves the issuer it fetches from.
    let text = policy_text(&issuer.jwks_uri());
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || check(&text))
        .await
        .unwrap();
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(
        stdout,
        "policy OK: 1 issuer(s), 2 client(s), 3 rule(s)\n\
         \x20 issuer cluster: iss http://cluster.test, audiences [\"token-authority\"], max token lifetime 3600s\n\
         \x20 rule[0]: max_ttl 900s, admin false, bind none\n\
         \x20 rule[1]: max_ttl server's, admin false, bind none\n\
         \x20 rule[2]: max_ttl server's, admin true, bind none\n\
         \x20 issuer cluster: 2 key(s) fetched\n"
    );
    issuer.server.stop().await;

    let unreachable = "[[issuer]]\nname = \"gone\"\nissuer = \"https://gone.test\"\njwks_uri = \"http://127.0.0.1:1/jwks\"\naudiences = [\"a\"]\n";
    let (code, stdout, _) = check(unreachable);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("  warning: issuer gone: its keys cannot be fetched from here (http://127.0.0.1:1/jwks: "),
        "{stdout}"
    );

    let cases = [
        ("[[rule]]\ncallers = [\"a\"]\nadmin = \"yes\"\n", "FILE: 1 problem(s)\n  line 3: invalid type: string \"yes\", expected a boolean\n"),
        (
            "[[issuer]]\nname = \"k8s\"\nissuer = \"https://k\"\njwks_file = \"/jwks.json\"\nbearer_token_file = \"/token\"\n\n[[rule]]\ncallers = [\"client:batch\"]\nclaims = { cnf = \"x\" }\n",
            "FILE: 4 problem(s)\n  issuer[0].bearer_token_file: is only for fetching over HTTPS\n  issuer[0].audiences: is required: a token minted for another service must not work here\n  rule[0].callers: \"client:batch\" names a client no [[client]] defines\n  rule[0].claims: \"cnf\" is set by the authority and cannot be fixed by a rule\n",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            check(text),
            (1, String::new(), expected.to_owned()),
            "{text}"
        );
    }

    let output = Command::new(BIN)
        .args(["policy", "check", "/nonexistent/policy.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr)
        .starts_with("cannot read the policy file /nonexistent/policy.toml: "));
}

/// The README's example policy, checked where its cluster files do not exist (a
/// workstation): exit 0, and a warning that the issuer's keys cannot be fetched from here.
#[test]
fn the_readme_example_policy_checks_with_a_warning_on_a_workstation() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### The policy file").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    assert!(
        example.contains("ca_file = \"/var/run/secrets/"),
        "{example}"
    );
    let (code, stdout, stderr) = check(example);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert!(
        stdout.starts_with("policy OK: 1 issuer(s), 1 client(s), 2 rule(s)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  warning: issuer cluster: its keys cannot be fetched from here ("),
        "{stdout}"
    );
}

/// Issuers whose JWKS does not answer (an address that accepts and never replies) are tried
/// at once, as the server does: three cost one fetch timeout (10 s), not three in a row, and
/// each is named in its own warning, in the file's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_that_do_not_answer_are_tried_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    let text: String = ["a", "b", "c"]
        .iter()
        .map(|name| {
            format!(
                "[[issuer]]\nname = \"{name}\"\nissuer = \"https://{name}.example\"\njwks_uri = \"http://{addr}/{name}\"\naudiences = [\"ta\"]\n\n"
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || check(&text))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, 0, "{stdout}");
    let warned: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("warning: issuer "))
        .map(|rest| rest.split(':').next().unwrap())
        .collect();
    assert_eq!(warned, ["a", "b", "c"], "{stdout}");
    assert!(
        took < std::time::Duration::from_secs(25),
        "three issuers that do not answer took {took:?}: tried one after another"
    );
}
