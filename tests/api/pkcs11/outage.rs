//! A token that goes away under load and comes back, with the real binary: its SoftHSM token
//! directory (of its own: the module state of this test process is not touched) is moved
//! away while callers issue tokens, then moved back. Meanwhile IssueToken answers
//! UNAVAILABLE and nothing else, the `signer` health service says NOT_SERVING and the gauge
//! 0, verification and the JWKS carry on; after the return the signer reconnects by itself
//! (the module reinitialised to find the token again) and every token ever issued verifies.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use token_authority::pb::{self, token_authority_client::TokenAuthorityClient};
use tonic::transport::Channel;

use crate::{
    binary::{spawn_binary_with_env, Process},
    helpers::{connect, verify_independently, DataDir},
};

const ISSUER: &str = "http://token-authority.test";
const UNAVAILABLE: &str =
    "the signing token cannot be reached; nothing was issued, and a retry is safe";

/// A SoftHSM configuration and token directory of its own, with one token `label`.
fn own_softhsm(root: &Path, label: &str) -> std::path::PathBuf {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let made = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", super::softhsm::USER_PIN, "--so-pin", "so-5678"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(made.status.success(), "{made:?}");
    conf
}

/// The binary signing with `algorithms` in token `label` of a SoftHSM of its own under
/// `root`, its data in `dir`; and that SoftHSM's configuration file (for `pkcs11-tool`).
fn serve_on_own_token(
    root: &Path,
    dir: &DataDir,
    label: &str,
    algorithms: &str,
) -> (Process, String) {
    let conf = own_softhsm(root, label).display().to_string();
    let mut flags = super::signer_flags(dir, label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = algorithms.into();
    flags.extend(["--issuer".into(), ISSUER.into()]);
    let process = tokio::task::block_in_place(|| {
        spawn_binary_with_env(dir, &super::args(&flags), &[("SOFTHSM2_CONF", &conf)])
    });
    (process, conf)
}

/// The JWKS the server at `http` serves.
async fn http_jwks(http: &str) -> serde_json::Value {
    reqwest::get(format!("http://{http}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// VerifyToken says `token` (audience `api`) is valid.
async fn assert_valid(client: &TokenAuthorityClient<Channel>, token: String) {
    let verdict = client
        .clone()
        .verify_token(pb::VerifyTokenRequest {
            token,
            audience: "api".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.valid, "{verdict:?}");
}

async fn signer_health(addr: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "signer".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn signer_gauge(http: &str) -> String {
    crate::binary::metrics_text(http)
        .await
        .lines()
        .find(|line| line.starts_with("token_authority_signer_available "))
        .expect("the signer gauge")
        .to_owned()
}

/// Waits (at most `within`) until `check` holds, asking every 100 ms.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct Seen {
    issued: Vec<(String, Instant)>,
    refused: Vec<(tonic::Code, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_gone_under_load_answers_unavailable_then_recovers_and_no_signature_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new();
    let (mut process, _) = serve_on_own_token(root.path(), &dir, "outage", "ES256,RS256");
    let client = connect(&process.grpc).await;
    assert_eq!(
        signer_health(&process.grpc).await,
        1,
        "SERVING at the start"
    );

    // Four callers issue without pause, ES256 and RS256 in turn, until told to stop.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (mut client, seen, stop) = (client.clone(), Arc::clone(&seen), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.is_cancelled() {
                    n += 1;
                    let answer = client
                        .issue_token(pb::IssueTokenRequest {
                            subject: format!("svc-{caller}-{n}"),
                            audience: vec!["api".into()],
                            algorithm: if n.is_multiple_of(2) {
                                "ES256"
                            } else {
                                "RS256"
                            }
                            .into(),
                            ..Default::default()
                        })
                        .await;
                    {
                        let mut record = seen.lock().unwrap();
                        match answer {
                            Ok(issued) => record
                                .issued
                                .push((issued.into_inner().token, Instant::now())),
                            Err(status) => record
                                .refused
                                .push((status.code(), status.message().to_owned())),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let count = |seen: &Arc<Mutex<Seen>>| {
        let seen = seen.lock().unwrap();
        (seen.issued.len(), seen.refused.len())
    };
    until(
        "tokens issued before the outage",
        Duration::from_secs(10),
        || {
            let issued = count(&seen).0;
            async move { issued >= 20 }
        },
    )
    .await;

    // The token goes away.
    let tokens = root.path().join("tokens");
    let token_dir = std::fs::read_dir(&tokens)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let away = root.path().join("away");
    std::fs::rename(&token_dir, &away).unwrap();
    let gone_at = Instant::now();
    until("an UNAVAILABLE answer", Duration::from_secs(10), || {
        let refused = count(&seen).1;
        async move { refused > 0 }
    })
    .await;
    until("signer health NOT_SERVING", Duration::from_secs(10), || {
        let grpc = process.grpc.clone();
        async move { signer_health(&grpc).await == 2 }
    })
    .await;
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 0"
    );
    // The replica stays in its Service: `/readyz` and the server's own health are unmoved.
    let readyz = reqwest::get(format!("http://{}/readyz", process.http))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", process.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let overall = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(overall, 1, "the server's health while the token is gone");
    // Verification and the JWKS carry on meanwhile.
    let earlier = seen.lock().unwrap().issued[0].0.clone();
    assert_valid(&client, earlier).await;
    let jwks = reqwest::get(format!("http://{}/.well-known/jwks.json", process.http))
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    // It comes back: the signer finds it again by itself (at most one check later).
    std::fs::rename(&away, &token_dir).unwrap();
    let back_at = Instant::now();
    until(
        "signer health SERVING again",
        Duration::from_secs(15),
        || {
            let grpc = process.grpc.clone();
            async move { signer_health(&grpc).await == 1 }
        },
    )
    .await;
    until(
        "tokens issued after the return",
        Duration::from_secs(10),
        || {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .issued
                    .iter()
                    .filter(|(_, at)| *at > back_at)
                    .count()
                    >= 20
            }
        },
    )
    .await;
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 1"
    );
    stop.cancel();
    for caller in callers {
        caller.await.unwrap();
    }

    // Only UNAVAILABLE, with its message; and every token issued, before, during and after,
    // verifies against the JWKS: no wrong signature ever left the server.
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    for (code, message) in &seen.refused {
        assert_eq!(
            (*code, message.as_str()),
            (tonic::Code::Unavailable, UNAVAILABLE)
        );
    }
    let jwks = http_jwks(&process.http).await;
    for (token, at) in &seen.issued {
        verify_independently(&jwks, token, ISSUER, "api").unwrap_or_else(|e| {
            panic!(
                "a token issued {:?} after the outage began does not verify: {e}",
                at.saturating_duration_since(gone_at)
            )
        });
    }
    // Each call refused for want of a signature was allowed first, and counted so: allowed
    // decisions outrun tokens issued by exactly those calls (what the IssueTokenFailing alert
    // reads), and none is missing from the decisions.
    let text = process.metrics_text().await;
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let allowed =
        sum(r#"token_authority_caller_decisions_total{method="IssueToken",outcome="allowed"}"#);
    let issued = sum("token_authority_tokens_issued_total{");
    assert_eq!(
        allowed - issued,
        seen.refused.len() as f64,
        "allowed {allowed}, issued {issued}, refused {}",
        seen.refused.len()
    );
    let lines = process.terminate();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("reconnected to the PKCS#11 token")),
        "no reconnection logged"
    );
}

/// Holds a lock on every file of the SoftHSM token directory `tokens` until dropped: SoftHSM
/// then blocks inside C_Sign, as a network HSM behind a dead connection does.
struct Frozen(std::process::Child);

impl Frozen {
    fn lock(tokens: &Path) -> Frozen {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, os, sys\n\
                 held = []\n\
                 for root, _, files in os.walk(sys.argv[1]):\n\
                 \x20   for name in files:\n\
                 \x20       f = open(os.path.join(root, name), 'r+b')\n\
                 \x20       fcntl.lockf(f, fcntl.LOCK_EX)\n\
                 \x20       held.append(f)\n\
                 print('locked', len(held), flush=True)\n\
                 sys.stdin.read()\n",
            ])
            .arg(tokens)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("locked "), "{line:?}");
        Frozen(child)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A token that stops answering (C_Sign never returns): IssueToken answers UNAVAILABLE
/// within the signing deadline, never holding the caller until its own deadline; the
/// `signer` health service says NOT_SERVING and the gauge 0 while a call hangs in it;
/// verification carries on; once the token answers again, so does everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_stops_answering_is_unavailable_within_the_deadline() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new();
    let (process, _) = serve_on_own_token(root.path(), &dir, "frozen", "ES256");
    let client = connect(&process.grpc).await;
    let issue = || {
        let mut client = client.clone();
        async move {
            let mut request = tonic::Request::new(pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["api".into()],
                ..Default::default()
            });
            // Longer than the server's signing deadline (5 s), shorter than tonic's own 30 s.
            request.set_timeout(Duration::from_secs(15));
            client.issue_token(request).await
        }
    };
    let before = issue().await.unwrap().into_inner().token;

    let frozen = Frozen::lock(&root.path().join("tokens"));
    // Sixteen at once: the signing threads all hang in the token, the calls queued behind
    // them wait for the deadline, and each is told so (or refused at once, once a call has
    // hung past it).
    let waited = [
        "the signer did not answer within 5s; nothing was issued, and a retry is safe",
        UNAVAILABLE,
    ];
    let first: Vec<_> = (0..16).map(|_| tokio::spawn(issue())).collect();
    for (call, answer) in first.into_iter().enumerate() {
        let status = answer.await.unwrap().unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "call {call}: {status:?}"
        );
        assert!(
            waited.contains(&status.message()),
            "call {call}: {status:?}"
        );
    }
    // The token still holds those calls: the next ones are refused at once, not queued
    // behind the hung threads for the deadline.
    let next: Vec<_> = (0..4).map(|_| tokio::spawn(issue())).collect();
    for (call, answer) in next.into_iter().enumerate() {
        let status = answer.await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unavailable, UNAVAILABLE),
            "call {call}"
        );
    }
    until("signer health NOT_SERVING", Duration::from_secs(15), || {
        let grpc = process.grpc.clone();
        async move { signer_health(&grpc).await == 2 }
    })
    .await;
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 0"
    );
    assert_valid(&client, before).await;

    drop(frozen);
    until(
        "signer health SERVING again",
        Duration::from_secs(20),
        || {
            let grpc = process.grpc.clone();
            async move { signer_health(&grpc).await == 1 }
        },
    )
    .await;
    let after = issue().await.unwrap().into_inner().token;
    let jwks = http_jwks(&process.http).await;
    verify_independently(&jwks, &after, ISSUER, "api").unwrap();
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 1"
    );
}

/// Runs `pkcs11-tool` (OpenSC) on token `label` of the SoftHSM configuration `conf`.
fn pkcs11_tool(conf: &str, label: &str, args: &[&str]) {
    let out = std::process::Command::new("pkcs11-tool")
        .args(["--module", super::softhsm::MODULE, "--token-label", label])
        .args(["--login", "--pin", super::softhsm::USER_PIN])
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("pkcs11-tool (apt-get install opensc)");
    assert!(out.status.success(), "pkcs11-tool {args:?}: {out:?}");
}

/// The current keys' private objects replaced behind the server's back by other keys under
/// the same CKA_ID and label: nothing they sign leaves (UNAVAILABLE), the `signer` health
/// says NOT_SERVING and the gauge 0, the token is not reconnected to at every call (at most
/// once); a forced rotation to keys the token holds brings issuing and health back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_keys_replaced_in_the_token_are_refused_and_shown_in_health() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new();
    let (mut process, conf) = serve_on_own_token(root.path(), &dir, "replaced", "ES256,RS256");
    let client = connect(&process.grpc).await;
    let issue = |alg: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    subject: "svc".into(),
                    audience: vec!["api".into()],
                    algorithm: alg.into(),
                    ..Default::default()
                })
                .await
        }
    };
    issue("ES256").await.unwrap();
    issue("RS256").await.unwrap();

    let keys = client
        .clone()
        .list_keys(crate::helpers::admin(pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let current: Vec<_> = keys
        .iter()
        .filter(|key| key.state == pb::KeyState::Current as i32)
        .collect();
    assert_eq!(current.len(), 2, "{keys:?}");
    tokio::task::block_in_place(|| {
        for key in &current {
            let id = key.token_object_id.as_str();
            let kind = if key.algorithm == "ES256" {
                "EC:prime256v1"
            } else {
                "rsa:2048"
            };
            pkcs11_tool(
                &conf,
                "replaced",
                &["--delete-object", "--type", "privkey", "--id", id],
            );
            pkcs11_tool(
                &conf,
                "replaced",
                &[
                    "--keypairgen",
                    "--key-type",
                    kind,
                    "--id",
                    id,
                    "--label",
                    &key.key_id,
                ],
            );
        }
    });

    for n in 0..10 {
        let alg = if n % 2 == 0 { "ES256" } else { "RS256" };
        let status = issue(alg).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{alg}: {status:?}");
    }
    until("signer health NOT_SERVING", Duration::from_secs(15), || {
        let grpc = process.grpc.clone();
        async move { signer_health(&grpc).await == 2 }
    })
    .await;
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 0"
    );

    for alg in ["ES256", "RS256"] {
        client
            .clone()
            .rotate_keys(crate::helpers::admin(pb::RotateKeysRequest {
                force: true,
                algorithm: alg.into(),
            }))
            .await
            .unwrap();
    }
    until(
        "signer health SERVING again",
        Duration::from_secs(15),
        || {
            let grpc = process.grpc.clone();
            async move { signer_health(&grpc).await == 1 }
        },
    )
    .await;
    let jwks = http_jwks(&process.http).await;
    for alg in ["ES256", "RS256"] {
        let token = issue(alg).await.unwrap().into_inner().token;
        verify_independently(&jwks, &token, ISSUER, "api").unwrap();
    }
    assert_eq!(
        signer_gauge(&process.http).await,
        "token_authority_signer_available 1"
    );
    let lines = process.terminate();
    let reconnections = lines
        .iter()
        .filter(|line| line.contains("reconnected to the PKCS#11 token"))
        .count();
    assert!(reconnections <= 1, "{reconnections} reconnections");
}

/// A second private key put under the current key's CKA_ID makes the key ambiguous: its
/// calls answer UNAVAILABLE. Once the intruder is removed the key signs again within
/// moments, however steadily callers keep asking meanwhile (each refusal must not put off
/// the next look at the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_ambiguous_signs_again_once_mended_under_steady_calls() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new();
    let (process, conf) = serve_on_own_token(root.path(), &dir, "mended", "ES256");
    let client = connect(&process.grpc).await;
    let issue = || {
        let mut client = client.clone();
        async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    subject: "svc".into(),
                    audience: vec!["api".into()],
                    ..Default::default()
                })
                .await
        }
    };
    issue().await.unwrap();
    let keys = client
        .clone()
        .list_keys(crate::helpers::admin(pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let current = keys
        .iter()
        .find(|key| key.state == pb::KeyState::Current as i32)
        .unwrap();
    let id = current.token_object_id.clone();
    tokio::task::block_in_place(|| {
        pkcs11_tool(
            &conf,
            "mended",
            &[
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--id",
                &id,
                "--label",
                "intruder",
            ],
        )
    });
    // The signer holds the key's handle; it looks the key up again (and finds two) after it
    // reconnects: the token goes away for a moment.
    let tokens = root.path().join("tokens");
    let token_dir = std::fs::read_dir(&tokens)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let away = root.path().join("away");
    std::fs::rename(&token_dir, &away).unwrap();
    assert_eq!(issue().await.unwrap_err().code(), tonic::Code::Unavailable);
    std::fs::rename(&away, &token_dir).unwrap();
    // Refused, call after call, for two seconds once the token is back.
    let mut refusals = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let status = issue().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(refusals >= 10, "{refusals}");
    tokio::task::block_in_place(|| {
        for kind in ["privkey", "pubkey"] {
            pkcs11_tool(
                &conf,
                "mended",
                &["--delete-object", "--type", kind, "--label", "intruder"],
            );
        }
    });
    // Callers keep asking every 250 ms; one of them gets a token within 15 s.
    let mended = Instant::now();
    let token = loop {
        match issue().await {
            Ok(issued) => break issued.into_inner().token,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    mended.elapsed() < Duration::from_secs(15),
                    "still refused 15 s after the intruder left: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let jwks = http_jwks(&process.http).await;
    verify_independently(&jwks, &token, ISSUER, "api").unwrap();
}

/// A restart finds what the running server found: a key object destroyed behind its back
/// stops no start. A retired key's object gone changes nothing (it never signs again, and
/// verifies with its stored public key); a current key's object gone leaves the server
/// serving the JWKS and VerifyToken, refusing only to sign with it (`UNAVAILABLE`, `signer`
/// health NOT_SERVING), until a forced rotation makes a key the token holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_key_objects_gone_serves_and_refuses_only_to_sign() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new();
    let (mut process, conf) = serve_on_own_token(root.path(), &dir, "restarted", "ES256");
    let client = connect(&process.grpc).await;
    let issue = |client: TokenAuthorityClient<Channel>| async move {
        client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["api".into()],
                ..Default::default()
            })
            .await
    };
    let by_first_key = issue(client.clone()).await.unwrap().into_inner().token;
    client
        .clone()
        .rotate_keys(crate::helpers::admin(pb::RotateKeysRequest {
            force: true,
            algorithm: "ES256".into(),
        }))
        .await
        .unwrap();
    let by_second_key = issue(client.clone()).await.unwrap().into_inner().token;
    let keys = client
        .clone()
        .list_keys(crate::helpers::admin(pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let object_of = |state: pb::KeyState| {
        keys.iter()
            .find(|key| key.state == state as i32)
            .unwrap_or_else(|| panic!("a {state:?} key in {keys:?}"))
            .token_object_id
            .clone()
    };
    let (retired, current) = (
        object_of(pb::KeyState::Retired),
        object_of(pb::KeyState::Current),
    );
    let restart = |process: &mut Process| {
        process.terminate();
        let mut flags = super::signer_flags(&dir, "restarted");
        let at = flags.iter().position(|f| f == "--algorithms").unwrap();
        flags[at + 1] = "ES256".into();
        flags.extend(["--issuer".into(), ISSUER.into()]);
        spawn_binary_with_env(&dir, &super::args(&flags), &[("SOFTHSM2_CONF", &conf)])
    };

    let destroy_and_restart = |process: &mut Process, object_id: &str| {
        tokio::task::block_in_place(|| {
            pkcs11_tool(
                &conf,
                "restarted",
                &["--delete-object", "--type", "privkey", "--id", object_id],
            );
            restart(process)
        })
    };

    // The retired key's object destroyed: the restart serves as before.
    process = destroy_and_restart(&mut process, &retired);
    let client = connect(&process.grpc).await;
    assert_valid(&client, by_first_key.clone()).await;
    issue(client.clone()).await.unwrap();

    // The current key's object destroyed too: the restart still serves, and says why it
    // cannot sign.
    process = destroy_and_restart(&mut process, &current);
    let client = connect(&process.grpc).await;
    assert_valid(&client, by_first_key.clone()).await;
    assert_valid(&client, by_second_key.clone()).await;
    let status = issue(client.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    until("signer health NOT_SERVING", Duration::from_secs(15), || {
        let grpc = process.grpc.clone();
        async move { signer_health(&grpc).await == 2 }
    })
    .await;
    client
        .clone()
        .rotate_keys(crate::helpers::admin(pb::RotateKeysRequest {
            force: true,
            algorithm: "ES256".into(),
        }))
        .await
        .unwrap();
    let token = issue(client.clone()).await.unwrap().into_inner().token;
    verify_independently(&http_jwks(&process.http).await, &token, ISSUER, "api").unwrap();
    until(
        "signer health SERVING again",
        Duration::from_secs(15),
        || {
            let grpc = process.grpc.clone();
            async move { signer_health(&grpc).await == 1 }
        },
    )
    .await;
    // The start said which key could not sign, and what mends it.
    let said = process
        .startup
        .iter()
        .find(|line| line.contains("a current key cannot sign"))
        .unwrap_or_else(|| panic!("no error line at start: {:#?}", process.startup))
        .clone();
    assert!(said.contains("\"ERROR\""), "{said}");
    assert!(said.contains("RotateKeys with force"), "{said}");
    process.terminate();
}
