//! A shared keystore whose history goes back (a backup restored, a point-in-time recovery,
//! a failover to a standby that lost commits) and rows changed behind the replicas' back:
//! the replicas notice, agree again, and never serve a key they have seen revoked; a row
//! that is not what the replicas wrote is refused on its own, by name.
//!
//! A restore is done the way it changes the data: every keystore table's rows replaced by
//! a copy taken earlier, in one transaction.

use std::time::{Duration, Instant};

use token_authority::{authority::Authority, pb};
use token_authority_jose::crypto::Algorithm;

use crate::{
    helpers::{metric, now, DataDir, TestServer},
    postgres::Store,
    replicas::{dirs, revoke, Replicas as _},
};

const TABLES: [&str; 3] = ["ta_keys", "ta_generation", "ta_history"];
const REWINDS: &str = "token_authority_store_history_rewinds_total";
const REFUSED: &str = "token_authority_store_refused_records";

/// Copies every keystore table aside, as a backup would.
fn back_up(shared: &Store, name: &str) {
    for table in TABLES {
        shared.pg().psql(&format!(
            "CREATE TABLE {name}_{table} AS SELECT * FROM {table}"
        ));
    }
}

/// Puts the copy back in place of what the tables hold, as a restore would.
fn restore(shared: &Store, name: &str) {
    let mut sql = String::from("BEGIN;");
    for table in TABLES {
        sql.push_str(&format!(
            "DELETE FROM {table}; INSERT INTO {table} SELECT * FROM {name}_{table};"
        ));
    }
    sql.push_str("COMMIT;");
    shared.pg().psql(&sql);
}

async fn current(server: &TestServer) -> String {
    server.current_kid("ES256").await
}

/// Waits until every server serves the same current key and JWKS; returns that key.
async fn agree(servers: &[&TestServer], bound: Duration) -> String {
    let started = Instant::now();
    loop {
        let mut kids = Vec::new();
        let mut sets = Vec::new();
        for server in servers {
            kids.push(current(server).await);
            sets.push(server.http_jwks().await);
        }
        if kids.windows(2).all(|w| w[0] == w[1]) && sets.windows(2).all(|w| w[0] == w[1]) {
            return kids.remove(0);
        }
        assert!(
            started.elapsed() < bound,
            "the replicas did not agree within {bound:?}: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state of `kid`'s row as stored.
fn stored_state(shared: &Store, kid: &str) -> String {
    shared.pg().psql(&format!(
        "SELECT record::json->>'state' FROM ta_keys WHERE kid = '{kid}'"
    ))
}

/// A backup taken before a revocation and three rotations is restored under two running
/// replicas. Before, they kept their own sets as "in sync" (the database's generation was
/// lower than theirs), a replica started afterwards signed with the revoked key again and
/// took its tokens for valid, and the next rotation split them. Now each notices the
/// history went back, the revocation is written back, a replica started afterwards refuses
/// the key, and a rotation is seen by all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_database_never_brings_a_revoked_key_back() {
    let shared = Store::postgres().await;
    let dirs = dirs();
    let a = shared.replica(&dirs[0]).await;
    let b = shared.replica(&dirs[1]).await;
    let old = a.issue("svc", &["aud"]).await;
    back_up(&shared, "before");

    revoke(&a, &old.key_id).await.unwrap();
    for _ in 0..3 {
        a.rotate().await;
    }
    agree(&[&a, &b], Duration::from_secs(5)).await;
    assert_eq!(stored_state(&shared, &old.key_id).trim(), "revoked");

    restore(&shared, "before");
    assert_eq!(stored_state(&shared, &old.key_id).trim(), "current");
    // From the restore on, the revoked key's tokens are refused everywhere, at every look.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for server in [&a, &b] {
            let verdict = server.verify(&old.token, "aud").await;
            assert!(
                !verdict.valid,
                "a revoked key's token verified after the restore"
            );
            assert_ne!(current(server).await, old.key_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A replica started after the restore knows nothing of the revocation but the database.
    let c = shared.replica(&dirs[2]).await;
    let verdict = c.verify(&old.token, "aud").await;
    assert_eq!(
        verdict.reason,
        pb::VerifyFailureReason::RevokedKey as i32,
        "{verdict:?}"
    );
    let signed = c.issue("svc", &["aud"]).await;
    assert_ne!(signed.key_id, old.key_id);
    // Both noticed, and the revocation is back in the database.
    assert_eq!(stored_state(&shared, &old.key_id).trim(), "revoked");
    for server in [&a, &b] {
        assert!(metric(server, REWINDS).await >= 1.0);
    }
    assert_eq!(metric(&c, REWINDS).await, 0.0);

    // One rotation, on any of them, is seen by all three: they serve one history.
    let before = agree(&[&a, &b, &c], Duration::from_secs(5)).await;
    b.rotate().await;
    let after = agree(&[&a, &b, &c], Duration::from_secs(5)).await;
    assert_ne!(before, after);
    for server in [a, b, c] {
        server.stop().await;
    }
}

/// An authority over the test's database, opened as a replica opens it now (in-process, no
/// server, no sync task: `refresh` runs when the test calls it).
async fn open_authority(shared: &Store) -> Authority {
    crate::replicas::open_authority(shared, now()).await
}

fn signer(authority: &Authority) -> String {
    authority
        .keys()
        .signer(Algorithm::ES256)
        .unwrap()
        .kid
        .to_string()
}

/// The database goes back and then forward again to the very generation a replica holds
/// (the same number, another history). Before, the replica took the equal generation for
/// "in sync" and kept serving a set the database no longer has; now it reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_replayed_to_the_same_generation_is_read() {
    let shared = Store::postgres().await;
    let a = open_authority(&shared).await;
    back_up(&shared, "before");
    a.rotate(None, true, now()).await.unwrap();
    a.rotate(None, true, now()).await.unwrap();
    let generation = || {
        shared
            .pg()
            .psql("SELECT generation FROM ta_generation")
            .trim()
            .to_owned()
    };
    let held = generation();
    restore(&shared, "before");
    let b = open_authority(&shared).await;
    while generation() != held {
        b.rotate(None, true, now()).await.unwrap();
    }
    assert_ne!(signer(&a), signer(&b));
    assert!(
        a.refresh(now()).await.unwrap(),
        "the replayed history was not read"
    );
    assert_eq!(signer(&a), signer(&b));
    assert_eq!(a.keys().infos().len(), b.keys().infos().len());
    assert_eq!(a.history_rewinds(), 1);
    // In step now: nothing more to read, nothing counted.
    assert!(!a.refresh(now()).await.unwrap());
    assert_eq!(a.history_rewinds(), 1);
    assert_eq!(b.history_rewinds(), 0);
}

/// Rows changed behind the replicas' back: a revoked key's row written back from a backup
/// (it says "current", with its private key) and a retired key's row damaged. Each is
/// refused on its own and named; the revoked key's tokens stay refused, a replica started
/// afterwards never signs with it, and RevokeKey of another key still works. Before, a
/// replica started afterwards signed with the written-back key, and the damaged row made
/// every read, and so every change, fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_written_back_or_damaged_is_refused_on_its_own() {
    let shared = Store::postgres().await;
    let dirs = [DataDir::new(), DataDir::new()];
    let a = shared.replica(&dirs[0]).await;
    let old = a.issue("svc", &["aud"]).await;
    let retired = current(&a).await;
    a.rotate().await;
    let compromised = current(&a).await;
    let compromised_token = a.issue("svc", &["aud"]).await;
    shared
        .pg()
        .psql("CREATE TABLE saved AS SELECT * FROM ta_keys");
    a.rotate().await;
    revoke(&a, &compromised).await.unwrap();
    assert_eq!(retired, old.key_id);

    // Written back: the compromised key's row as it was when it was current.
    shared.pg().psql(&format!(
        "UPDATE ta_keys SET record = (SELECT record FROM saved WHERE kid = '{compromised}') \
         WHERE kid = '{compromised}'"
    ));
    // Damaged: the retired key's row.
    shared.pg().psql(&format!(
        "UPDATE ta_keys SET record = '{{\"kid\":' WHERE kid = '{retired}'"
    ));

    let b = shared.replica(&dirs[1]).await;
    assert_eq!(metric(&b, REFUSED).await, 2.0);
    let verdict = b.verify(&compromised_token.token, "aud").await;
    assert!(
        !verdict.valid,
        "a written-back revoked key verified: {verdict:?}"
    );
    assert_ne!(current(&b).await, compromised);
    for _ in 0..20 {
        assert_ne!(b.issue("svc", &["aud"]).await.key_id, compromised);
    }

    // RevokeKey of another key works on both replicas' database, the bad rows untouched.
    let signing = current(&b).await;
    revoke(&b, &signing).await.unwrap();
    let verdict = b.verify(&b.issue("svc", &["aud"]).await.token, "aud").await;
    assert!(verdict.valid, "{verdict:?}");
    agree(&[&a, &b], Duration::from_secs(5)).await;
    assert_eq!(stored_state(&shared, &compromised).trim(), "current");
    assert_eq!(metric(&a, REFUSED).await, 2.0);

    // `keys list` names each refused row and why.
    let (ok, output) = crate::binary::run_command(&[
        "keys",
        "list",
        "--store",
        &shared.pg().url(),
        "--kek-file",
        shared.kek(),
    ]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!(
            "key {compromised} is refused: the row does not match"
        )),
        "{output}"
    );
    assert!(
        output.contains(&format!("key {retired} is refused: the row does not match")),
        "{output}"
    );
    a.stop().await;
    b.stop().await;
}

/// A database from before the manifest (schema version 2) is migrated at the next start:
/// its rows are taken as they are, the keys and their tokens carry on, and from then on a
/// row changed by hand is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_the_manifest_is_migrated_with_its_keys() {
    let shared = Store::postgres().await;
    let dir = DataDir::new();
    let a = shared.replica(&dir).await;
    let issued = a.issue("svc", &["aud"]).await;
    let keys = a.list_keys().await;
    a.stop().await;
    // Back to version 2, as the previous release left it.
    shared.pg().psql(
        "BEGIN; ALTER TABLE ta_generation DROP COLUMN database_id, DROP COLUMN lineage, \
         DROP COLUMN manifest; DROP TABLE ta_history; DROP TABLE ta_replicas; \
         DROP TABLE ta_status_lists, ta_status_cursor, ta_token_status, ta_status_jti_key; \
         DROP SEQUENCE ta_status_seq; \
         DELETE FROM ta_schema_version WHERE version >= 3; COMMIT;",
    );
    let a = shared.replica(&dir).await;
    assert_eq!(a.list_keys().await, keys);
    assert!(a.verify(&issued.token, "aud").await.valid);
    assert_eq!(metric(&a, REFUSED).await, 0.0);
    assert_eq!(
        shared
            .pg()
            .psql("SELECT max(version) FROM ta_schema_version")
            .trim(),
        "6"
    );
    a.stop().await;
    shared.pg().psql(&format!(
        "UPDATE ta_keys SET record = replace(record, '\"state\":\"current\"', '\"state\":\"next\"') \
         WHERE kid = '{}'",
        issued.key_id
    ));
    let a = shared.replica(&dir).await;
    assert_eq!(metric(&a, REFUSED).await, 1.0);
    assert_ne!(a.issue("svc", &["aud"]).await.key_id, issued.key_id);
    a.stop().await;
}

/// The first thing a replica does after a restore is a change (here a rotation, before its
/// sync has run): the change revokes again the key the restore brought back, in the same
/// transaction, instead of planning from the restored rows and serving that key retired,
/// still verifying its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_planned_on_a_restored_database_keeps_the_revocations() {
    let shared = Store::postgres().await;
    let a = open_authority(&shared).await;
    let revoked = signer(&a);
    back_up(&shared, "before");
    a.revoke(&revoked, "compromised", now()).await.unwrap();
    restore(&shared, "before");
    a.rotate(None, true, now()).await.unwrap();
    assert_eq!(stored_state(&shared, &revoked).trim(), "revoked");
    let record = a
        .keys()
        .infos()
        .iter()
        .find(|r| r.kid == revoked)
        .map(|r| r.state);
    assert_eq!(
        record,
        Some(token_authority::authority::keys::KeyState::Revoked)
    );
}

async fn health(server: &TestServer, service: &str) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        crate::helpers::endpoint(server.grpc_addr, None).connect_lazy(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A restore the replica cannot write its revocations back to (the database refuses writes
/// to the keys, as a read-only standby would): the replica keeps serving the set it holds,
/// the revoked key still refused, and says so in the gRPC health of `keystore` (NOT_SERVING)
/// while the main service and /readyz stay up; once the database takes writes again it
/// catches up and `keystore` is SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_catch_up_after_a_restore_says_so_in_its_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let shared = Store::postgres().await;
    let dir = DataDir::new();
    let a = shared.replica(&dir).await;
    assert_eq!(health(&a, "keystore").await, ServingStatus::Serving as i32);
    let old = a.issue("svc", &["aud"]).await;
    back_up(&shared, "before");
    revoke(&a, &old.key_id).await.unwrap();

    // The restore, and from its end on the keys refuse writes.
    let mut sql = String::from(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'read-only'; \
         END $$ LANGUAGE plpgsql; BEGIN;",
    );
    for table in TABLES {
        sql.push_str(&format!(
            "DELETE FROM {table}; INSERT INTO {table} SELECT * FROM before_{table};"
        ));
    }
    sql.push_str(
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON ta_keys \
         FOR EACH ROW EXECUTE FUNCTION refuse(); COMMIT;",
    );
    shared.pg().psql(&sql);

    let started = Instant::now();
    while health(&a, "keystore").await != ServingStatus::NotServing as i32 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keystore health stayed SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&a, REWINDS).await >= 1.0);
    assert!(!a.verify(&old.token, "aud").await.valid);
    assert_ne!(a.issue("svc", &["aud"]).await.key_id, old.key_id);
    assert_eq!(
        health(&a, "tokenauthority.v1.TokenAuthority").await,
        ServingStatus::Serving as i32
    );
    let ready = a.http.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    shared.pg().psql("DROP TRIGGER refuse ON ta_keys");
    let started = Instant::now();
    while health(&a, "keystore").await != ServingStatus::Serving as i32 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keystore health stayed NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_state(&shared, &old.key_id).trim(), "revoked");
    a.stop().await;
}
