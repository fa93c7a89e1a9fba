//! Several replicas on one PostgreSQL keystore: one key set, changes made on one replica
//! reach the others promptly, concurrent lifecycle changes happen once, and the data plane
//! keeps answering while the database is down.
//!
//! Replicas are in-process servers (`TestServer`), each with its own data directory and
//! ports, all on one throwaway cluster (`postgres::Postgres`). ES256 keeps key generation
//! out of the timings.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::header;
use token_authority::{
    authority::keys::KeyState,
    authority::{Authority, Settings},
    pb,
    server::ServerError,
    store::{kek::Keks, KeyStore, PgEnvironment, PgSettings, PgStore, StoreError},
};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

use crate::{
    helpers::{admin, config, metric, now, DataDir, TestServer},
    postgres::Store,
};

/// What every replica of these tests shares beyond the test's `Store` (a cluster and its
/// KEK): ES256, and a one-second sync.
pub(crate) trait Replicas {
    fn replica_config(&self, dir: &DataDir) -> token_authority::config::Config;

    async fn replica(&self, dir: &DataDir) -> TestServer {
        TestServer::start_with(self.replica_config(dir)).await
    }

    async fn three(&self, dirs: &[DataDir; 3]) -> [TestServer; 3] {
        // Started together: their first transactions race to create the key set.
        let (a, b, c) = tokio::join!(
            self.replica(&dirs[0]),
            self.replica(&dirs[1]),
            self.replica(&dirs[2])
        );
        [a, b, c]
    }
}

impl Replicas for Store {
    fn replica_config(&self, dir: &DataDir) -> token_authority::config::Config {
        self.config(dir, &["--algorithms", "ES256"])
    }
}

pub(crate) fn dirs() -> [DataDir; 3] {
    [DataDir::new(), DataDir::new(), DataDir::new()]
}

/// RevokeKey of `kid` on `server`, as the admin.
pub(crate) async fn revoke(
    server: &TestServer,
    kid: &str,
) -> Result<pb::RevokeKeyResponse, tonic::Status> {
    server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: kid.into(),
            reason: "compromised".into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn etag(server: &TestServer) -> String {
    let response = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned()
}

fn key_states(keys: &pb::ListKeysResponse) -> Vec<(String, i32)> {
    let mut states: Vec<_> = keys
        .keys
        .iter()
        .map(|k| (k.key_id.clone(), k.state))
        .collect();
    states.sort();
    states
}

/// Waits until every replica serves `server`'s ETag; returns how long that took.
async fn converge(servers: &[TestServer], leader: usize, bound: Duration) -> Duration {
    let started = Instant::now();
    let wanted = etag(&servers[leader]).await;
    loop {
        let mut agreed = true;
        for server in servers {
            agreed &= etag(server).await == wanted;
        }
        if agreed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "the replicas' JWKS did not agree within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stop_all(servers: [TestServer; 3]) {
    for server in servers {
        server.stop().await;
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_one_key_set_and_agree_after_a_rotation() {
    let shared = Store::postgres().await;
    let dirs = dirs();
    let servers = shared.three(&dirs).await;

    // One key set, created once, although all three started on an empty database.
    let first = key_states(&servers[0].list_keys().await);
    assert_eq!(first.len(), 2, "{first:?}");
    for server in &servers[1..] {
        assert_eq!(key_states(&server.list_keys().await), first);
    }
    converge(&servers, 0, Duration::from_secs(2)).await;

    // Issued on one, verified on the others.
    let issued = servers[0].issue("svc-a", &["aud"]).await;
    for server in &servers[1..] {
        let verdict = server.verify(&issued.token, "aud").await;
        assert!(verdict.valid, "{verdict:?}");
    }

    // Rotated on one: every JWKS agrees promptly, and the new key signs everywhere.
    let rotated = servers[1].rotate().await;
    let took = converge(&servers, 1, Duration::from_secs(2)).await;
    println!("JWKS agreement after a rotation: {took:?}");
    for server in &servers {
        assert_eq!(
            server.issue("svc-b", &["aud"]).await.key_id,
            rotated.current_key_id
        );
        assert!(server.verify(&issued.token, "aud").await.valid);
    }

    // The database holds the keys sealed: every private key is a KEK id, a nonce and a
    // ciphertext, never the PKCS#8 itself (an unsealed key is its base64 string). Random
    // base64 may hold any text, so the shape is checked, not the absence of `MIG`.
    let stored = shared.pg().psql("SELECT record FROM ta_keys");
    let records: Vec<serde_json::Value> = stored
        .lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| serde_json::from_str(line.trim()).unwrap())
        .collect();
    assert!(!records.is_empty(), "{stored}");
    for record in &records {
        let sealed = record["private_key"]
            .as_object()
            .unwrap_or_else(|| panic!("{record}"));
        let mut fields: Vec<&str> = sealed.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["ciphertext", "kek_id", "nonce"], "{record}");
        assert!(
            sealed["kek_id"].as_str().unwrap().starts_with("kek-"),
            "{record}"
        );
    }
    stop_all(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_is_refused_by_the_others_within_two_seconds() {
    let shared = Store::postgres().await;
    let dirs = dirs();
    let servers = shared.three(&dirs).await;
    let mut delays = Vec::new();
    for round in 0..100 {
        let issuer = &servers[round % 3];
        let issued = issuer.issue("svc", &["aud"]).await;
        // The others know the key before it is revoked.
        for server in &servers {
            assert!(server.verify(&issued.token, "aud").await.valid);
        }
        let started = Instant::now();
        issuer
            .client
            .clone()
            .revoke_key(admin(pb::RevokeKeyRequest {
                key_id: issued.key_id.clone(),
                reason: "replica test".into(),
            }))
            .await
            .unwrap();
        for (index, server) in servers.iter().enumerate() {
            if index == round % 3 {
                continue;
            }
            loop {
                let verdict = server.verify(&issued.token, "aud").await;
                if verdict.reason == pb::VerifyFailureReason::RevokedKey as i32 {
                    break;
                }
                assert!(verdict.valid, "{verdict:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "replica {index} still accepts a key revoked {:?} ago",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            delays.push(started.elapsed());
        }
    }
    delays.sort();
    println!(
        "revocation propagation over {} observations: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    stop_all(servers).await;
}

/// An authority over the test's database, as a replica opens it at `at` (in-process, no
/// server): ES256, a one-hour rotation period and a one-minute publish lead.
pub(crate) async fn open_authority(shared: &Store, at: u64) -> Authority {
    let settings = Settings {
        issuer: "http://token-authority.test".into(),
        default_ttl: 300,
        max_ttl: 600,
        leeway: 60,
        max_token_bytes: 8192,
        algorithms: vec![Algorithm::ES256],
        publish_lead: 60,
        rotation_period: 3600,
        clock: Clock::system(),
        signers: Default::default(),
    };
    let pg = PgSettings {
        url: shared.pg().url(),
        password_file: None,
        ca_file: None,
        libpq: PgEnvironment::default(),
        host_name: None,
    };
    let keks = Keks::load(std::path::Path::new(shared.kek())).unwrap();
    let store = Arc::new(PgStore::new(&pg, keks).unwrap());
    store.migrate().await.unwrap();
    Authority::open_shared(KeyStore::Postgres(store), settings, at)
        .await
        .unwrap()
}

/// Three authorities on one database (in-process, without servers), ticked at the same
/// instant each time a rotation falls due: exactly one rotates, and the database holds one
/// current and one next key after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_falling_due_on_every_replica_happens_once() {
    let shared = Store::postgres().await;
    let t0 = now();
    let mut authorities = Vec::new();
    for _ in 0..3 {
        authorities.push(open_authority(&shared, t0).await);
    }
    let mut at = t0;
    for round in 0..15 {
        at += 3600 + 60;
        let (a, b, c) = tokio::join!(
            authorities[0].tick(at),
            authorities[1].tick(at),
            authorities[2].tick(at)
        );
        let rotations: usize = [a, b, c]
            .into_iter()
            .map(|plan| plan.unwrap().rotated.len())
            .sum();
        assert_eq!(rotations, 1, "round {round}");
        let current: Vec<String> = authorities
            .iter()
            .map(|authority| {
                authority
                    .keys()
                    .signer(Algorithm::ES256)
                    .unwrap()
                    .kid
                    .to_string()
            })
            .collect();
        assert!(current.iter().all(|kid| *kid == current[0]), "{current:?}");
        let states = shared
            .pg()
            .psql("SELECT record::json->>'state', count(*) FROM ta_keys GROUP BY 1 ORDER BY 1");
        assert!(states.contains("current|1\n"), "{states}");
        assert!(states.contains("next|1\n"), "{states}");
        let records = authorities[0].keys();
        assert_eq!(
            records
                .infos()
                .iter()
                .filter(|r| r.state == KeyState::Current)
                .count(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_the_replicas_keep_serving_and_catch_up_after() {
    let shared = Arc::new(Store::postgres().await);
    let dirs = dirs();
    let servers = Arc::new(shared.three(&dirs).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (servers, stop, done, failed) = (
            Arc::clone(&servers),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failed),
        );
        tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (issuer, verifier) = (&servers[round % 3], &servers[(round + 1) % 3]);
                round += 1;
                let issued = issuer
                    .client
                    .clone()
                    .issue_token(pb::IssueTokenRequest {
                        subject: "svc".into(),
                        audience: vec!["aud".into()],
                        ..Default::default()
                    })
                    .await;
                let ok = match issued {
                    Ok(issued) => verifier
                        .client
                        .clone()
                        .verify_token(pb::VerifyTokenRequest {
                            token: issued.into_inner().token,
                            audience: "aud".into(),
                            ..Default::default()
                        })
                        .await
                        .is_ok_and(|v| v.into_inner().valid),
                    Err(_) => false,
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    let before_outage = done.load(Ordering::Relaxed);
    // A change while the database is down is refused as retryable, and changes nothing.
    let status = servers[0]
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unavailable, "unavailable: the keystore database cannot be reached; nothing changed, and a retry is safe")
    );
    // The sync age grows while the replicas cannot reach the database.
    let started = Instant::now();
    while metric(&servers[1], "token_authority_store_sync_age_seconds").await < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sync age did not grow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done.load(Ordering::Relaxed) > before_outage,
        "no request completed during the outage"
    );

    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().restart())
            .await
            .unwrap();
    }
    // The retried change goes through once the database is back, and reaches everyone.
    let started = Instant::now();
    let rotated = loop {
        match servers[0]
            .client
            .clone()
            .rotate_keys(admin(pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            }))
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(started.elapsed() < Duration::from_secs(20));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    converge(&servers[..], 0, Duration::from_secs(10)).await;
    for server in servers.iter() {
        assert_eq!(
            server.issue("svc", &["aud"]).await.key_id,
            rotated.current_key_id
        );
    }
    let started = Instant::now();
    while metric(&servers[2], "token_authority_store_sync_age_seconds").await > 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no resync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("load across the outage: {done} issue+verify pairs, {failed} failed");
    assert_eq!(failed, 0);
    assert!(done > 0);
    let Ok(servers) = Arc::try_unwrap(servers) else {
        panic!("the load task still holds the servers")
    };
    stop_all(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_with_the_database_down_is_ready_only_once_loaded() {
    let shared = Arc::new(Store::postgres().await);
    let dir = DataDir::new();
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    let config = shared.replica_config(&dir);
    let mut starting = tokio::spawn(TestServer::start_with(config));
    // Not ready (its health check answers NOT_SERVING) while the database is unreachable.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut starting)
            .await
            .is_err(),
        "the replica became ready without its database"
    );
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().restart())
            .await
            .unwrap();
    }
    let server = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("the replica did not start once the database was back")
        .unwrap();
    let issued = server.issue("svc", &["aud"]).await;
    assert!(server.verify(&issued.token, "aud").await.valid);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused() {
    let shared = Store::postgres().await;
    shared.pg().psql(
        "CREATE TABLE ta_schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO ta_schema_version (version) VALUES (99);",
    );
    let dir = DataDir::new();
    let (server, result) = TestServer::try_start(shared.replica_config(&dir)).await;
    assert!(server.is_none());
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            ServerError::Store(StoreError::SchemaTooNew { found: 99, .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("newer than"), "{error}");
    // Untouched: nothing was created beside it.
    assert_eq!(
        shared
            .pg()
            .psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'ta_%'")
            .trim(),
        "1"
    );
}

/// `keys migrate`: a sled keystore copied into an empty database keeps its kids, states and
/// times, so tokens minted before the move verify after it, by the replica and by an
/// independent JWT library reading the replica's JWKS; a second copy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_migrate_moves_a_sled_keystore_into_postgres() {
    let shared = Store::postgres().await;
    let dir = DataDir::new();
    let sled = TestServer::start_with(config(
        &dir,
        &["--kek-file", shared.kek(), "--algorithms", "RS256,ES256"],
    ))
    .await;
    let mut tokens = Vec::new();
    for alg in ["RS256", "ES256"] {
        let issued = sled
            .client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["aud".into()],
                algorithm: alg.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(issued.token);
    }
    // A rotation leaves a retired key that still verifies, and a token from the new one.
    sled.rotate().await;
    tokens.push(sled.issue("svc", &["aud"]).await.token);
    // A token revoked on its own: its status moves with the keys.
    let revoked = sled.issue("leaked", &["aud"]).await;
    sled.client
        .clone()
        .set_token_status(crate::helpers::admin(pb::SetTokenStatusRequest {
            jti: revoked.jti.clone(),
            status: pb::TokenStatus::Invalid as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    let before = key_states(&sled.list_keys().await);
    let times: Vec<_> = sled
        .list_keys()
        .await
        .keys
        .into_iter()
        .map(|k| (k.key_id, k.created_at, k.activated_at, k.retired_at))
        .collect();
    sled.stop().await;

    let args = token_authority::config::MigrateArgs {
        data_dir: dir.path.clone(),
        kek_file: shared.kek().to_owned().into(),
        to: shared.pg().url(),
        store_password_file: None,
        store_ca_file: None,
        allow_group_readable_files: false,
    };
    let copied = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || token_authority::cli::keys::migrate(&args))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(
        copied.starts_with("copied 5 keys and 2 status lists (1 statuses set) into"),
        "{copied}"
    );

    let replica_dir = DataDir::new();
    let url = shared.pg().url();
    let replica = TestServer::start_with(config(
        &replica_dir,
        &[
            "--store",
            &url,
            "--kek-file",
            shared.kek(),
            "--algorithms",
            "RS256,ES256",
        ],
    ))
    .await;
    assert_eq!(key_states(&replica.list_keys().await), before);
    let mut after: Vec<_> = replica
        .list_keys()
        .await
        .keys
        .into_iter()
        .map(|k| (k.key_id, k.created_at, k.activated_at, k.retired_at))
        .collect();
    let mut times = times;
    times.sort_by(|a, b| a.0.cmp(&b.0));
    after.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(after, times);
    let jwks = replica.http_jwks().await;
    for token in &tokens {
        let verdict = replica.verify(token, "aud").await;
        assert!(verdict.valid, "{verdict:?}");
        crate::helpers::verify_independently(&jwks, token, &replica.issuer, "aud").unwrap();
    }
    let verdict = replica.verify(&revoked.token, "aud").await;
    assert_eq!(
        verdict.reason(),
        pb::VerifyFailureReason::RevokedToken,
        "{verdict:?}"
    );
    // And by jti: the jti key moved too (revoked is final).
    let error = replica
        .client
        .clone()
        .set_token_status(crate::helpers::admin(pb::SetTokenStatusRequest {
            jti: revoked.jti.clone(),
            status: pb::TokenStatus::Valid as i32,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    // Indexes go on after the migrated ones.
    let next = replica.issue("svc", &["aud"]).await;
    let (old, new) = (
        crate::status::reference(&revoked.token).unwrap(),
        crate::status::reference(&next.token).unwrap(),
    );
    assert!(
        (crate::status::list_id(&new), new.idx) > (crate::status::list_id(&old), old.idx),
        "{old:?} {new:?}"
    );
    replica.stop().await;

    let refused = tokio::task::spawn_blocking(move || token_authority::cli::keys::migrate(&args))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.to_string().contains("already holds 5 keys"),
        "{refused}"
    );
}

/// The next key set on a WatchKeys stream, skipping keepalives.
async fn next_set(stream: &mut tonic::Streaming<pb::WatchKeysResponse>) -> pb::WatchedKeySet {
    use token_authority::pb::watch_keys_response::Event;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("no key set within 5 s")
            .unwrap()
            .expect("the stream ended");
        if let Some(Event::KeySet(set)) = message.event {
            return set;
        }
    }
}

/// A watcher of one replica hears of a change made on another: the set that replica learns
/// from the database is streamed like its own changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_a_rotation_made_on_another() {
    let shared = Store::postgres().await;
    let dirs = dirs();
    let servers = shared.three(&dirs).await;
    let mut stream = servers[2]
        .client
        .clone()
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let current = |set: &pb::WatchedKeySet| {
        set.keys
            .iter()
            .find(|key| key.state() == pb::KeyState::Current)
            .map(|key| key.key_id.clone())
    };
    let first = next_set(&mut stream).await;
    let rotated = servers[0].rotate().await;
    assert_ne!(current(&first).unwrap(), rotated.current_key_id);
    let pushed = next_set(&mut stream).await;
    assert_eq!(current(&pushed).unwrap(), rotated.current_key_id);
    assert_eq!(pushed.etag, etag(&servers[2]).await);
    drop(stream);
    stop_all(servers).await;
}

/// Every replica was down when a rotation fell due: the three that start together after it
/// perform it once (the start's `due` plan is a transaction planned from what it re-reads),
/// and starting again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_missed_while_every_replica_was_down_happens_once_at_the_next_start() {
    let shared = Store::postgres().await;
    let open = |at: u64| open_authority(&shared, at);
    let t0 = now();
    let first = open(t0).await;
    let signer = first.keys().signer(Algorithm::ES256).unwrap().kid.clone();
    let next = first
        .keys()
        .infos()
        .iter()
        .find(|r| r.state == KeyState::Next)
        .unwrap()
        .kid
        .clone();
    drop(first);

    // Two periods later, all three start at once.
    let later = t0 + 2 * 3600;
    let (a, b, c) = tokio::join!(open(later), open(later), open(later));
    for authority in [&a, &b, &c] {
        assert_eq!(
            *authority.keys().signer(Algorithm::ES256).unwrap().kid,
            *next,
            "the key published as next signs after the missed rotation"
        );
    }
    let states = shared
        .pg()
        .psql("SELECT record::json->>'state', count(*) FROM ta_keys GROUP BY 1 ORDER BY 1");
    assert_eq!(states, "current|1\nnext|1\nretired|1\n", "{states}");
    let retired = shared
        .pg()
        .psql("SELECT kid FROM ta_keys WHERE record::json->>'state' = 'retired'");
    assert_eq!(retired.trim(), &*signer);
    let generation = shared.pg().psql("SELECT generation FROM ta_generation");

    let again = open(later + 1).await;
    assert_eq!(*again.keys().signer(Algorithm::ES256).unwrap().kid, *next);
    assert_eq!(
        shared.pg().psql("SELECT generation FROM ta_generation"),
        generation,
        "a start with nothing due wrote to the database"
    );
}

/// An operator revokes, on one replica, a key that another replica created a moment ago
/// (seen in that replica's ListKeys): the replica that has not heard of it yet syncs first
/// instead of answering NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_created_a_moment_ago_on_another_replica_works() {
    let shared = Store::postgres().await;
    let (dir_a, dir_b) = (DataDir::new(), DataDir::new());
    let (a, b) = tokio::join!(shared.replica(&dir_a), shared.replica(&dir_b));
    for round in 0..10 {
        a.rotate().await;
        let created = a
            .list_keys()
            .await
            .keys
            .into_iter()
            .find(|k| k.state == pb::KeyState::Next as i32)
            .unwrap()
            .key_id;
        let answer = b
            .client
            .clone()
            .revoke_key(admin(pb::RevokeKeyRequest {
                key_id: created.clone(),
                reason: "replica test".into(),
            }))
            .await;
        assert!(answer.is_ok(), "round {round}: {answer:?}");
        let states = key_states(&b.list_keys().await);
        assert!(
            states.contains(&(created, pb::KeyState::Revoked as i32)),
            "round {round}: {states:?}"
        );
    }
    // A kid no replica ever had is still NOT_FOUND.
    let unknown = b
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: "no-such-kid".into(),
            reason: "replica test".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (tonic::Code::NotFound, "no key no-such-kid")
    );
    a.stop().await;
    b.stop().await;
}

/// With the database down and a rotation due, the schedule retries with backoff (1 s
/// doubling) instead of every second, keeps signing with the key set it holds, and tries at
/// once when the database is back; and a replica
/// over a shared store keeps nothing on disk (its --data-dir is never created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_backs_off_while_the_database_is_down() {
    let shared = Arc::new(Store::postgres().await);
    let dir = DataDir::new();
    let url = shared.pg().url();
    let server = TestServer::start_with(config(
        &dir,
        &[
            "--store",
            &url,
            "--kek-file",
            shared.kek(),
            "--algorithms",
            "ES256",
            "--rotation-period",
            "2s",
            "--publish-lead",
            "0s",
            "--store-sync-interval",
            "1s",
        ],
    ))
    .await;
    assert!(
        !dir.path.exists(),
        "a replica over a shared store created {}",
        dir.path.display()
    );
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    let failures = "token_authority_scheduled_key_step_failures_total";
    // The rotation falls due within 2 s; attempts then come at +1, +3, +7 and +15 s (each
    // up to a tenth later): the window ends between the last two.
    let window = Duration::from_millis(10_500);
    let started = Instant::now();
    while started.elapsed() < window {
        let issued = server.issue("svc", &["aud"]).await;
        assert!(server.verify(&issued.token, "aud").await.valid);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let attempts = metric(&server, failures).await;
    assert!(
        (2.0..=5.0).contains(&attempts),
        "{attempts} failed attempts in {window:?} (every second would be about 9)"
    );
    // The database back: the sync notices within its interval (1 s) and the overdue
    // rotation is tried then, not at the next backoff attempt (about 6 s later).
    let signer = server.issue("svc", &["aud"]).await.key_id;
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().restart())
            .await
            .unwrap();
    }
    let back = Instant::now();
    while server.issue("svc", &["aud"]).await.key_id == signer {
        assert!(
            back.elapsed() < Duration::from_secs(4),
            "the overdue rotation waited for the backoff after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "overdue rotation done {:?} after the database came back",
        back.elapsed()
    );
    server.stop().await;
}

/// `token-authority keys ARGS` on the database at `url`, with the KEK file `kek`.
fn keys_on(url: &str, kek: &std::path::Path, args: &[&str]) -> (bool, String) {
    let store = ["--store", url, "--kek-file", kek.to_str().unwrap()];
    crate::binary::run_command(&[&["keys"][..], args, &store].concat())
}

/// `keys import`, `list` and `rewrap` work on the replicas' database while they run: each
/// change is one transaction the replicas pick up as if made through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_commands_change_the_shared_database_while_the_replicas_run() {
    let shared = Store::postgres().await;
    let work = tempfile::tempdir().unwrap();
    let old = std::fs::read_to_string(shared.kek()).unwrap();
    let new = format!(
        "{}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [42u8; 32])
    );
    // The replicas can unseal under both KEKs and seal under the old one: the first step of
    // a KEK rotation, before `rewrap` re-seals under the new one.
    let both = work.path().join("both");
    crate::helpers::write_private(&both, format!("{old}{new}"));
    let new_first = work.path().join("new-first");
    crate::helpers::write_private(&new_first, format!("{new}{old}"));
    let new_only = work.path().join("new-only");
    crate::helpers::write_private(&new_only, &new);
    let url = shared.pg().url();
    let replica_config = |dir: &DataDir| {
        config(
            dir,
            &[
                "--store",
                &url,
                "--kek-file",
                both.to_str().unwrap(),
                "--algorithms",
                "ES256",
                "--store-sync-interval",
                "1s",
            ],
        )
    };
    let (dir_a, dir_b) = (DataDir::new(), DataDir::new());
    let (a, b) = tokio::join!(
        TestServer::start_with(replica_config(&dir_a)),
        TestServer::start_with(replica_config(&dir_b))
    );

    let pem = crate::keys_command::openssl_key(
        work.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let (ok, out) = keys_on(
        &url,
        &both,
        &[
            "import",
            "--pem",
            pem.to_str().unwrap(),
            "--kid",
            "team-key",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("imported team-key (ES256) as the next key; it replaces the unused next key"),
        "{out}"
    );
    for server in [&a, &b] {
        let started = Instant::now();
        while !key_states(&server.list_keys().await)
            .contains(&("team-key".into(), pb::KeyState::Next as i32))
        {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the import did not reach a replica"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (ok, out) = keys_on(&url, &both, &["list"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("team-key ") && l.contains(" next ")),
        "{out}"
    );

    // Before the rewrap the new KEK alone cannot unseal the keys; after it, it can.
    let list_new_only = || keys_on(&url, &new_only, &["list"]);
    let (ok, out) = list_new_only();
    assert!(!ok, "{out}");
    let (ok, out) = keys_on(&url, &new_first, &["rewrap"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("re-sealed 2 keys under "), "{out}");
    let (ok, out) = list_new_only();
    assert!(ok, "{out}");

    // The replicas picked up the re-sealed set and carry on: the imported key rotates in on
    // one and signs on the other.
    a.rotate().await;
    let started = Instant::now();
    loop {
        let issued = b.issue("svc", &["aud"]).await;
        if issued.key_id == "team-key" {
            assert!(a.verify(&issued.token, "aud").await.valid);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the rotation did not reach the other replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    b.stop().await;
}
