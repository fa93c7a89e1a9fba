//! Policy reload over the real server: a new file takes effect under load with no failed
//! request; a broken or inconsistent file is refused whole, counted, and the policy in
//! force stays.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use token_authority_jose::crypto;
use tonic::Code;

use crate::{
    callers::{ask, basic, hex, issue_as, start_with_policy},
    helpers::{metric, DataDir},
};

fn client(id: &str, secret: &str) -> String {
    format!(
        "[[client]]\nid = \"{id}\"\nsecret_sha256 = \"{}\"\n",
        hex(&crypto::sha256(secret.as_bytes()))
    )
}

fn rule(caller: &str) -> String {
    format!("[[rule]]\ncallers = [\"{caller}\"]\naudiences = [\"api\"]\n")
}

/// Replaces the file the way a ConfigMap update does: a new file swapped in whole.
fn swap(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_under_load_fails_no_request_and_a_broken_file_keeps_the_old_policy() {
    let dir = DataDir::new();
    let v1 = format!("{}{}", client("a", "secret-a"), rule("client:a"));
    // The probes for b fail until the reload: their address must not be throttled.
    let (server, path) = start_with_policy(
        &dir,
        &v1,
        &[
            "--policy-reload-interval",
            "100ms",
            "--auth-failures-per-ip",
            "0",
        ],
    )
    .await;
    let server = Arc::new(server);
    let as_b = basic("b", "secret-b");
    let b_allowed = {
        let server = Arc::clone(&server);
        let as_b = as_b.clone();
        move || {
            let server = Arc::clone(&server);
            let as_b = as_b.clone();
            async move { issue_as(&server, Some(&as_b), ask("client:b", &["api"], None, "")).await }
        }
    };
    assert_eq!(
        b_allowed().await.unwrap_err().message(),
        "the client id or secret is not valid"
    );

    // Load: client a issues continuously through every reload below.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            tokio::spawn(async move {
                let as_a = basic("a", "secret-a");
                while !stop.load(Ordering::Relaxed) {
                    match issue_as(&server, Some(&as_a), ask("client:a", &["api"], None, "")).await
                    {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let v2 = format!(
        "{}{}{}{}",
        client("a", "secret-a"),
        client("b", "secret-b"),
        rule("client:a"),
        rule("client:b")
    );
    swap(&path, &v2);
    eventually("client b allowed by the new policy", || {
        let b_allowed = b_allowed.clone();
        async move { b_allowed().await.is_ok() }
    })
    .await;
    let ok = r#"token_authority_policy_reloads_total{outcome="ok"}"#;
    let failed_reloads = r#"token_authority_policy_reloads_total{outcome="failed"}"#;
    let refused = r#"token_authority_config_refused{file="policy"}"#;
    assert_eq!(metric(&server, ok).await, 1.0);
    assert_eq!(metric(&server, refused).await, 0.0);

    // Not TOML, then valid TOML that is inconsistent: each refused whole, each counted.
    swap(&path, "[[rule]\ncallers = [");
    eventually("the broken file counted", || {
        let server = Arc::clone(&server);
        async move { metric(&server, failed_reloads).await == 1.0 }
    })
    .await;
    swap(&path, &format!("{}{}", rule("client:a"), rule("client:b")));
    eventually("the inconsistent file counted", || {
        let server = Arc::clone(&server);
        async move { metric(&server, failed_reloads).await == 2.0 }
    })
    .await;
    // v2 is still in force: b (which the refused files would have dropped) still issues.
    b_allowed().await.unwrap();
    assert_eq!(metric(&server, ok).await, 1.0);
    assert_eq!(metric(&server, refused).await, 1.0);
    // The file put back to what is in force: nothing refused on disk any more.
    swap(&path, &v2);
    eventually("the file in force again", || {
        let server = Arc::clone(&server);
        async move { metric(&server, refused).await == 0.0 }
    })
    .await;
    assert_eq!(metric(&server, failed_reloads).await, 2.0);

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(done.load(Ordering::Relaxed) > 0);
    drop(b_allowed);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

/// A policy file that does not load stops the server before it serves.
#[tokio::test]
async fn a_broken_policy_file_stops_the_start() {
    let dir = DataDir::new();
    dir.create();
    let path = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&path, "[[rule]]\ncallers = [\"client:ghost\"]\n").unwrap();
    let config = crate::helpers::config(&dir, &["--policy-file", path.to_str().unwrap()]);
    let (server, stopped) = crate::helpers::TestServer::try_start(config).await;
    assert!(server.is_none());
    assert_eq!(
        stopped.unwrap_err().to_string(),
        format!(
            "the policy file {} is refused: rule[0].callers: \"client:ghost\" names a client no [[client]] defines",
            path.display()
        )
    );
}

/// A file written in place, caught between two writes, is never applied: its first half
/// parses as a policy wider than the whole (no max_ttl), and must not be in force even for
/// one poll. Only the whole file, read the same twice, is loaded.
#[tokio::test]
async fn a_file_caught_half_written_is_never_applied() {
    use std::io::Write as _;
    let dir = DataDir::new();
    let narrow = format!(
        "{}{}max_ttl = \"1m\"\n",
        client("a", "secret-a"),
        rule("client:a")
    );
    let (server, path) =
        start_with_policy(&dir, &narrow, &["--policy-reload-interval", "100ms"]).await;
    let server = Arc::new(server);
    let as_a = basic("a", "secret-a");
    let long = || ask("client:a", &["api"], Some(3600), "");
    let over = |allowed: &str| {
        format!("ttl: 3600s is above the {allowed} allowed for caller \"client:a\"")
    };
    let refused = issue_as(&server, Some(&as_a), long()).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::PermissionDenied, over("60s").as_str())
    );

    // While the file is half-written, ask for an hour over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (server, stop, allowed) =
            (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&allowed));
        let as_a = as_a.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if issue_as(&server, Some(&as_a), long()).await.is_ok() {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let whole = format!(
        "{}{}max_ttl = \"5m\"\n",
        client("a", "secret-a"),
        rule("client:a")
    );
    let (first, rest) = whole.split_at(whole.find("max_ttl").unwrap());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);

    let ok = r#"token_authority_policy_reloads_total{outcome="ok"}"#;
    eventually("the whole file loaded", || {
        let server = Arc::clone(&server);
        async move { metric(&server, ok).await == 1.0 }
    })
    .await;
    // The whole file is in force: 5 minutes, not an hour.
    issue_as(
        &server,
        Some(&as_a),
        ask("client:a", &["api"], Some(300), ""),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    assert_eq!(
        allowed.load(Ordering::Relaxed),
        0,
        "the half-written file was applied"
    );
    assert_eq!(metric(&server, ok).await, 1.0);
    let refused = issue_as(&server, Some(&as_a), long()).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::PermissionDenied, over("300s").as_str())
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}
