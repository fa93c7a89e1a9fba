//! The change lock of replicas on PostgreSQL: a replica frozen while it holds it is cut off
//! by the server within seconds; a change that cannot get it answers within its bound and
//! says why; and the schedule asks for it only when a step is due, so a database that is
//! down or a lock held elsewhere costs nothing (no wait, no failure) while nothing is due.

use std::time::{Duration, Instant};

use token_authority::{pb, store::postgres::CHANGE_LOCK};

use crate::{
    binary::spawn_binary,
    helpers::{admin, metric, now, DataDir, TestServer},
    postgres::Store,
};

/// Who holds or waits for the change lock: the README's query, as an operator runs it.
const LOCK_HOLDERS: &str = "SELECT a.pid, a.application_name, a.state, l.granted
  FROM pg_locks l JOIN pg_stat_activity a USING (pid)
  WHERE l.locktype = 'advisory' AND l.classid = 1952541541 AND l.objid = 2037579777";

const FAILURES: &str = "token_authority_scheduled_key_step_failures_total";

/// The query is the README's (in a list item, two spaces in), and names the lock the
/// replicas take: PostgreSQL shows a bigint advisory key as its high and low halves.
#[test]
fn the_readmes_lock_query_names_the_change_lock() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let indented: Vec<String> = LOCK_HOLDERS.lines().map(|l| format!("  {l}")).collect();
    assert!(
        readme.contains(&indented.join("\n")),
        "the README's query differs"
    );
    assert_eq!(1_952_541_541, CHANGE_LOCK >> 32);
    assert_eq!(2_037_579_777, CHANGE_LOCK & 0xffff_ffff);
}

/// `(application_name, state, granted)` of every session holding or waiting for the lock.
fn lock_sessions(shared: &Store) -> Vec<(String, String, bool)> {
    shared
        .pg()
        .psql(LOCK_HOLDERS)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            (fields[1].into(), fields[2].into(), fields[3] == "t")
        })
        .collect()
}

/// Waits (at most 10 s) until the lock sessions satisfy `wanted`.
async fn wait_for_lock(
    shared: &Store,
    what: &str,
    wanted: impl Fn(&[(String, String, bool)]) -> bool,
) {
    let started = Instant::now();
    loop {
        let sessions = lock_sessions(shared);
        if wanted(&sessions) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replica_args(shared: &Store) -> Vec<String> {
    let mut args = shared.args();
    args.extend(["--algorithms".into(), "ES256".into()]);
    args
}

async fn revoke_current(
    server: &TestServer,
) -> (Result<pb::RevokeKeyResponse, tonic::Status>, Duration) {
    let kid = server.current_kid("ES256").await;
    let started = Instant::now();
    let answer = server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: kid,
            reason: "change lock test".into(),
        }))
        .await
        .map(tonic::Response::into_inner);
    (answer, started.elapsed())
}

/// A replica (the real binary) is stopped with SIGSTOP just as it is granted the change
/// lock for a rotation: to the server, a session idle in its transaction, holding the lock.
/// The server ends that session after the idle-in-transaction timeout (5 s), and a
/// revocation on another replica, waiting for the lock (at most 8 s), goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_holding_the_change_lock_is_cut_off_and_a_revocation_goes_through() {
    let shared = Store::postgres().await;
    let (dir, frozen_dir) = (DataDir::new(), DataDir::new());
    let args = replica_args(&shared);
    let server = TestServer::start_with(crate::helpers::config(
        &dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
    .await;
    let frozen = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || {
            spawn_binary(
                &frozen_dir,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap()
    };
    let frozen_pid = frozen.child.id().to_string();

    // The test holds the lock, so the frozen replica's rotation waits for it...
    let holder = shared.pg().session().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({CHANGE_LOCK})"
        ))
        .await
        .unwrap();
    let rotation = {
        let addr = frozen.grpc.clone();
        tokio::spawn(async move {
            let mut client = crate::helpers::connect(addr).await;
            client
                .rotate_keys(admin(pb::RotateKeysRequest {
                    force: true,
                    ..Default::default()
                }))
                .await
        })
    };
    wait_for_lock(&shared, "the replica waits for the lock", |sessions| {
        sessions
            .iter()
            .any(|(app, _, granted)| app == "token-authority" && !granted)
    })
    .await;
    // ...is frozen, and is granted it when the test lets go.
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &frozen_pid])
        .status()
        .unwrap();
    assert!(stop.success());
    holder.batch_execute("COMMIT").await.unwrap();
    wait_for_lock(&shared, "the frozen replica holds the lock", |sessions| {
        sessions.iter().any(|(app, state, granted)| {
            app == "token-authority" && *granted && state == "idle in transaction"
        })
    })
    .await;

    let (answer, took) = revoke_current(&server).await;
    println!("revocation behind a frozen lock holder answered in {took:?}");
    let revoked = answer.expect("the revocation behind a frozen replica failed");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(
        lock_sessions(&shared).is_empty(),
        "the frozen replica's session lives on"
    );
    assert_ne!(revoked.current_key_id, "");

    let resume = std::process::Command::new("kill")
        .args(["-CONT", &frozen_pid])
        .status()
        .unwrap();
    assert!(resume.success());
    // Its rotation did not happen: its session was ended before it could write.
    let rotated = tokio::time::timeout(Duration::from_secs(10), rotation)
        .await
        .expect("the resumed replica did not answer")
        .unwrap();
    assert_eq!(rotated.unwrap_err().code(), tonic::Code::Unavailable);
    drop(frozen);
    server.stop().await;
}

/// A session that holds the lock and is busy (not idle: the server does not end it): a
/// revocation answers UNAVAILABLE within the lock wait (8 s), saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_behind_a_busy_lock_holder_answers_unavailable_within_the_bound() {
    let shared = Store::postgres().await;
    let dir = DataDir::new();
    let args = replica_args(&shared);
    let server = TestServer::start_with(crate::helpers::config(
        &dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
    .await;
    let holder = shared.pg().session().await;
    let busy = tokio::spawn(async move {
        let _ = holder
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({CHANGE_LOCK}); SELECT pg_sleep(60)"
            ))
            .await;
    });
    wait_for_lock(&shared, "the test holds the lock", |sessions| {
        sessions
            .iter()
            .any(|(app, _, granted)| app == "test" && *granted)
    })
    .await;

    let (answer, took) = revoke_current(&server).await;
    let status = answer.unwrap_err();
    println!("revocation behind a busy lock holder answered in {took:?}: {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "unavailable: another replica holds the change lock; nothing changed, and a retry is safe"
    );
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(10),
        "{took:?}"
    );
    shared.pg().psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test'",
    );
    busy.await.unwrap();
    server.stop().await;
}

/// Two replicas with a 10 s rotation period whose schedules were set, at their start, for
/// the rotation due at `activation + 10`; a forced rotation at `activation + 6` moved it to
/// `activation + 16`. Both wake at `activation + 10` with nothing due.
struct StaleWake {
    shared: Store,
    _dirs: [DataDir; 2],
    servers: [TestServer; 2],
    activation: u64,
}

async fn stale_wake() -> StaleWake {
    let shared = Store::postgres().await;
    let dirs = [DataDir::new(), DataDir::new()];
    let mut args = replica_args(&shared);
    args.extend(["--rotation-period", "10s", "--publish-lead", "0s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (a, b) = tokio::join!(
        TestServer::start_with(crate::helpers::config(&dirs[0], &args)),
        TestServer::start_with(crate::helpers::config(&dirs[1], &args))
    );
    let keys = a.list_keys().await.keys;
    let activation = keys
        .iter()
        .find(|k| k.state == pb::KeyState::Current as i32)
        .and_then(|k| k.activated_at.as_ref())
        .unwrap()
        .seconds as u64;
    sleep_until(activation + 6).await;
    let rotated = b.rotate().await.current_key_id;
    let started = Instant::now();
    while a.current_kid("ES256").await != rotated {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the rotation did not reach a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    StaleWake {
        shared,
        _dirs: dirs,
        servers: [a, b],
        activation,
    }
}

async fn sleep_until(unix: u64) {
    let now = crate::helpers::wall_clock();
    if let Some(wait) = Duration::from_secs(unix).checked_sub(now) {
        tokio::time::sleep(wait).await;
    }
}

/// With the change lock held elsewhere, a wake with nothing due does not queue for it (no
/// session of the replicas waits, nothing fails); the step that is due later does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_takes_the_change_lock_only_when_a_step_is_due() {
    let StaleWake {
        shared,
        _dirs,
        servers,
        activation,
    } = stale_wake().await;
    let holder = shared.pg().session().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({CHANGE_LOCK})"
        ))
        .await
        .unwrap();
    // The stale wake at +10, and 4 s after it: no replica asked for the lock.
    sleep_until(activation + 10).await;
    while now() < activation + 15 {
        let sessions = lock_sessions(&shared);
        assert!(
            sessions.iter().all(|(app, _, _)| app == "test"),
            "a replica asked for the lock with nothing due: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for server in &servers {
        assert_eq!(metric(server, FAILURES).await, 0.0);
    }
    // The rotation due at +16 asks for it.
    wait_for_lock(&shared, "the due rotation waits for the lock", |sessions| {
        sessions
            .iter()
            .any(|(app, _, granted)| app == "token-authority" && !granted)
    })
    .await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    for server in servers {
        server.stop().await;
    }
}

/// With the database down, a wake with nothing due is not a failure; the step that is due
/// later, failing, is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_only_due_steps_count_as_failures() {
    let StaleWake {
        shared,
        _dirs,
        servers,
        activation,
    } = stale_wake().await;
    let shared = std::sync::Arc::new(shared);
    {
        let shared = std::sync::Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    // 4 s after the stale wake at +10: nothing counted.
    sleep_until(activation + 14).await;
    for server in &servers {
        assert_eq!(
            metric(server, FAILURES).await,
            0.0,
            "a wake with nothing due counted"
        );
    }
    // The rotation due at +16 fails, and counts.
    let started = Instant::now();
    while metric(&servers[0], FAILURES).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failed rotation was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for server in servers {
        server.stop().await;
    }
}

/// Key generation takes a moment in the process and seconds in a hardware token; the
/// database ends a change transaction idle past its timeout. The keys a change needs are
/// made before its transaction opens, so a slow generator costs time, never the change:
/// here every generation takes 0.7 s (a failpoint) and the database's idle timeout is cut
/// to 0.5 s, and a new database's first keys and a forced rotation both go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_key_generation_never_leaves_the_change_transaction_idle() {
    let shared = Store::postgres().await;
    let url = format!(
        "{}?options=-c%20idle_in_transaction_session_timeout%3D500",
        shared.pg().url()
    );
    let mut args = replica_args(&shared);
    let at = args.iter().position(|arg| arg == "--store").unwrap();
    args[at + 1] = url;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // At most the two keys of the first start sleep: another test generating keys now is
    // slowed by at most that much, and never fails.
    fail::cfg("signers.generate", "2*sleep(700)").unwrap();
    let started = TestServer::try_start(crate::helpers::config(&DataDir::new(), &args)).await;
    fail::remove("signers.generate");
    let server = match started {
        (Some(server), Ok(())) => server,
        (_, outcome) => panic!("the first start failed: {outcome:?}"),
    };

    let before = server.current_kid("ES256").await;
    fail::cfg("signers.generate", "1*sleep(700)").unwrap();
    let rotated = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await;
    fail::remove("signers.generate");
    let rotated = rotated.expect("the forced rotation failed").into_inner();
    assert_ne!(rotated.current_key_id, before);
    server.stop().await;
}
