//! Faults injected at every step of the keystore's write path (the `fail` crate; its
//! failpoints exist only in test builds), for every kind of lifecycle write: a manual
//! rotation, revocations, a scheduled rotation, a deletion after retention and an import.
//!
//! After each fault: the answer says nothing changed; memory equals what a fresh open reads
//! from disk; a retry succeeds; after a restart every algorithm has exactly one current and
//! one next key, and the key promoted is the one that was published as next.
//!
//! Failpoints are process-global, so they live in this test binary of their own, and each
//! test holds `fail::FailScenario` (a global lock) for its whole run.

use std::path::{Path, PathBuf};

use token_authority::{
    authority::keys::{self, KeyInfo, KeyRecord, KeyState},
    authority::{Authority, AuthorityError, Settings},
    cli::keys::{self as keys_command, KeysCommandError},
    config::ImportArgs,
    store::{KeyStore, StoreError},
    telemetry::chain,
};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

/// The steps of every write: the sled transaction, its flush, the guard file.
const COMMIT: &[&str] = &[
    "store.commit",
    "store.flush",
    "guard.write",
    "guard.fsync",
    "guard.rename",
    "guard.dirsync",
];
/// Writing the data key file before the commit, when a new private key needs a data key.
const ADD: &[&str] = &[
    "datakeys-add.write",
    "datakeys-add.fsync",
    "datakeys-add.rename",
    "datakeys-add.dirsync",
];
/// Erasing data keys after the commit, when a key is revoked or deleted.
const ERASE: &[&str] = &[
    "datakeys-erase.write",
    "datakeys-erase.fsync",
    "datakeys-erase.rename",
    "datakeys-erase.dirsync",
];
const T0: u64 = 1_700_000_000;
const LEAD: u64 = 900;
const MAX_TTL: u64 = 3600;
const LEEWAY: u64 = 60;
const PERIOD: u64 = 86_400;

fn settings() -> Settings {
    Settings {
        issuer: "http://token-authority.test".into(),
        default_ttl: 60,
        max_ttl: MAX_TTL,
        leeway: LEEWAY,
        max_token_bytes: 8192,
        algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
        publish_lead: LEAD,
        rotation_period: PERIOD,
        clock: Clock::system(),
        signers: Default::default(),
    }
}

type View = Vec<(String, Algorithm, KeyState)>;

fn view(records: &[KeyInfo]) -> View {
    let mut view: View = records
        .iter()
        .map(|r| (r.kid.clone(), r.alg, r.state))
        .collect();
    view.sort_by(|a, b| a.0.cmp(&b.0));
    view
}

fn find(view: &View, alg: Algorithm, state: KeyState) -> Vec<String> {
    view.iter()
        .filter(|(_, a, s)| *a == alg && *s == state)
        .map(|(kid, _, _)| kid.clone())
        .collect()
}

fn one_current_one_next(view: &View) {
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        for state in [KeyState::Current, KeyState::Next] {
            assert_eq!(find(view, alg, state).len(), 1, "{alg} {state:?}: {view:?}");
        }
    }
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("keystore")
}

/// Opens the keystore. sled's background threads can hold its lock for a moment after the
/// previous handle was dropped: wait for that, never for anything else.
fn open_store(dir: &Path) -> (KeyStore, Vec<KeyRecord>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match KeyStore::open(&store_path(dir), None) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => return result.unwrap(),
        }
    }
}

fn disk(dir: &Path) -> View {
    view(
        &open_store(dir)
            .1
            .iter()
            .map(KeyRecord::info)
            .collect::<Vec<_>>(),
    )
}

fn open(dir: &Path, now: u64) -> Authority {
    let (store, records) = open_store(dir);
    Authority::open(store, records, settings(), now).unwrap()
}

fn not_applied(result: Result<(), AuthorityError>, point: &str) {
    match result {
        Err(AuthorityError::Store(error @ StoreError::NotApplied(_))) => {
            // The injected fault is the cause, and the line shows it.
            let shown = chain(&error).to_string();
            assert!(shown.contains(point), "{point}: {shown}")
        }
        other => panic!("{point}: expected NotApplied, got {other:?}"),
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Rotate,
    RevokeCurrent,
    RevokeNext,
    ScheduledRotation,
    DeletionAfterRetention,
}

impl Op {
    /// Every step this kind of write goes through.
    fn points(self) -> Vec<&'static str> {
        let steps: &[&[&str]] = match self {
            Op::Rotate | Op::ScheduledRotation => &[ADD, COMMIT],
            Op::RevokeCurrent | Op::RevokeNext => &[ADD, COMMIT, ERASE],
            Op::DeletionAfterRetention => &[COMMIT, ERASE],
        };
        steps.concat()
    }

    /// The data directory's state before the operation, and when it was reached.
    async fn prepare(self, dir: &Path) -> u64 {
        let authority = open(dir, T0);
        let at = match self {
            Op::DeletionAfterRetention => {
                authority
                    .rotate(Some(Algorithm::ES256), true, T0 + 1)
                    .await
                    .unwrap();
                T0 + 1
            }
            _ => T0,
        };
        drop(authority);
        at
    }

    async fn run(self, authority: &Authority, before: &View) -> Result<(), AuthorityError> {
        let es256 = |state| find(before, Algorithm::ES256, state).remove(0);
        match self {
            Op::Rotate => authority
                .rotate(Some(Algorithm::ES256), false, T0 + LEAD)
                .await
                .map(drop),
            Op::RevokeCurrent => authority
                .revoke(&es256(KeyState::Current), "leaked", T0 + 10)
                .await
                .map(drop),
            Op::RevokeNext => authority
                .revoke(&es256(KeyState::Next), "leaked", T0 + 10)
                .await
                .map(drop),
            Op::ScheduledRotation => {
                let plan = authority.tick(T0 + PERIOD + 1).await?;
                assert_eq!(plan.rotated.len(), 2, "both algorithms rotate");
                Ok(())
            }
            Op::DeletionAfterRetention => {
                let plan = authority.tick(T0 + 1 + MAX_TTL + LEEWAY).await?;
                assert_eq!(plan.deleted.len(), 1);
                Ok(())
            }
        }
    }

    /// What must hold after the operation took effect, from the state before it.
    fn check_done(self, before: &View, after: &View) {
        one_current_one_next(after);
        let es256 = |view: &View, state| find(view, Algorithm::ES256, state);
        match self {
            Op::Rotate | Op::RevokeCurrent => {
                // The key promoted is the one verifiers already had as next.
                assert_eq!(
                    es256(after, KeyState::Current),
                    es256(before, KeyState::Next),
                    "{after:?}"
                );
            }
            Op::RevokeNext => {
                assert_eq!(
                    es256(after, KeyState::Current),
                    es256(before, KeyState::Current)
                );
            }
            Op::ScheduledRotation => {
                for alg in [Algorithm::ES256, Algorithm::EdDSA] {
                    assert_eq!(
                        find(after, alg, KeyState::Current),
                        find(before, alg, KeyState::Next)
                    );
                }
            }
            Op::DeletionAfterRetention => {
                assert!(es256(after, KeyState::Retired).is_empty(), "{after:?}");
                assert_eq!(after.len(), before.len() - 1);
            }
        }
        if let Op::RevokeCurrent | Op::RevokeNext = self {
            assert_eq!(es256(after, KeyState::Revoked).len(), 1, "{after:?}");
        }
    }
}

async fn fault_at_every_step(op: Op) {
    let scenario = fail::FailScenario::setup();
    for point in op.points() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let at = op.prepare(dir).await;

        let authority = open(dir, at);
        let before = view(authority.keys().infos());
        fail::cfg(point, "return").unwrap();
        not_applied(op.run(&authority, &before).await, point);
        fail::remove(point);
        // Memory kept the old set, and so did the disk.
        assert_eq!(view(authority.keys().infos()), before, "{op:?} {point}");
        drop(authority);
        assert_eq!(disk(dir), before, "{op:?} {point}: memory and disk differ");

        // A retry does it, once.
        let authority = open(dir, at);
        op.run(&authority, &before).await.unwrap();
        let memory = view(authority.keys().infos());
        drop(authority);
        let after = disk(dir);
        assert_eq!(memory, after, "{op:?} {point}");
        op.check_done(&before, &after);
        // And the restarted authority finds nothing left to repair.
        let authority = open(dir, at);
        assert_eq!(view(authority.keys().infos()), after);
    }
    scenario.teardown();
}

#[tokio::test]
async fn manual_rotation() {
    fault_at_every_step(Op::Rotate).await;
}

#[tokio::test]
async fn revoking_the_current_key() {
    fault_at_every_step(Op::RevokeCurrent).await;
}

#[tokio::test]
async fn revoking_the_next_key() {
    fault_at_every_step(Op::RevokeNext).await;
}

#[tokio::test]
async fn scheduled_rotation() {
    fault_at_every_step(Op::ScheduledRotation).await;
}

#[tokio::test]
async fn deletion_after_retention() {
    fault_at_every_step(Op::DeletionAfterRetention).await;
}

fn import_args(dir: &Path, pem: &Path) -> ImportArgs {
    ImportArgs {
        data_dir: dir.to_owned(),
        store: token_authority::config::StoreArgs::default(),
        kek_file: None,
        pem: pem.to_owned(),
        kid: None,
        algorithm: None,
        max_ttl: std::time::Duration::from_secs(MAX_TTL),
        signer: token_authority::config::SignerKind::Process,
        // A test's temporary directory has the umask's mode; these tests are about faults.
        allow_group_readable_files: true,
    }
}

/// `keys import`, waiting out sled's lock the way `open_store` does.
fn import_waiting(args: &ImportArgs) -> Result<String, KeysCommandError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match keys_command::import(args, Clock::system()) {
            Err(KeysCommandError::Store(StoreError::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => return result,
        }
    }
}

#[tokio::test]
async fn import() {
    let scenario = fail::FailScenario::setup();
    for point in [ADD, COMMIT].concat() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        drop(open(dir, T0));
        let before = disk(dir);
        let key = keys::generate(Algorithm::ES256).unwrap();
        let pem = dir.join("key.pem");
        std::fs::write(
            &pem,
            pem_rfc7468::encode_string(
                "PRIVATE KEY",
                pem_rfc7468::LineEnding::LF,
                key.private_key.as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();

        fail::cfg(point, "return").unwrap();
        let result = import_waiting(&import_args(dir, &pem));
        fail::remove(point);
        assert!(
            matches!(
                result,
                Err(KeysCommandError::Store(StoreError::NotApplied(_)))
            ),
            "{point}: {result:?}"
        );
        assert_eq!(disk(dir), before, "{point}");

        import_waiting(&import_args(dir, &pem)).unwrap();
        let after = disk(dir);
        one_current_one_next(&after);
        assert_eq!(find(&after, Algorithm::ES256, KeyState::Next), [key.kid]);
        assert_eq!(
            after.len(),
            before.len(),
            "the unused next key was replaced"
        );
    }
    scenario.teardown();
}

/// A fault after the sled transaction, and another while undoing it: the outcome is not
/// known, so the store refuses further writes; a restart reads a consistent set, whichever.
#[tokio::test]
async fn a_write_that_cannot_be_undone_stops_further_writes_until_a_restart() {
    let scenario = fail::FailScenario::setup();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let authority = open(dir, T0);
    let before = view(authority.keys().infos());
    fail::cfg("guard.write", "return").unwrap();
    fail::cfg("store.undo", "return").unwrap();
    let error = authority
        .rotate(Some(Algorithm::ES256), true, T0 + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthorityError::Store(StoreError::Unknown { .. })),
        "{error:?}"
    );
    // Both faults reach the line: the write's, and the undo's.
    let shown = chain(&error).to_string();
    assert!(
        shown.starts_with("the keystore write failed (injected fault at guard.write) and could not be undone (injected fault at store.undo): "),
        "{shown}"
    );
    fail::remove("guard.write");
    fail::remove("store.undo");
    assert_eq!(view(authority.keys().infos()), before);
    let error = authority
        .rotate(Some(Algorithm::ES256), true, T0 + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthorityError::Store(StoreError::Poisoned)),
        "{error:?}"
    );
    drop(authority);
    let after = disk(dir);
    one_current_one_next(&after);
    // Here sled kept the rotation (the flush had succeeded): it is the whole rotation.
    Op::Rotate.check_done(&before, &after);
    scenario.teardown();
}

/// Erasing a revoked key's data key fails after the rename, and putting the file back fails
/// too: the revocation is in sled but the undo would need the erased data key, so the store
/// stops writing; a restart reads the revocation, complete, and erases what is left.
#[tokio::test]
async fn an_erasure_that_cannot_be_put_back_stops_further_writes_until_a_restart() {
    let scenario = fail::FailScenario::setup();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let authority = open(dir, T0);
    let before = view(authority.keys().infos());
    let revoked = find(&before, Algorithm::ES256, KeyState::Current).remove(0);
    fail::cfg("datakeys-erase.dirsync", "return").unwrap();
    fail::cfg("datakeys-restore.write", "return").unwrap();
    let error = authority
        .revoke(&revoked, "leaked", T0 + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthorityError::Store(StoreError::Unknown { .. })),
        "{error:?}"
    );
    let shown = chain(&error).to_string();
    assert!(
        shown.starts_with("the keystore write failed (injected fault at datakeys-erase.dirsync) and could not be undone (restoring the data key file: injected fault at datakeys-restore.write): "),
        "{shown}"
    );
    fail::remove("datakeys-erase.dirsync");
    fail::remove("datakeys-restore.write");
    let error = authority
        .rotate(Some(Algorithm::ES256), true, T0 + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthorityError::Store(StoreError::Poisoned)),
        "{error:?}"
    );
    drop(authority);
    let after = disk(dir);
    Op::RevokeCurrent.check_done(&before, &after);
    let data_keys = token_authority::store::datakeys::DataKeys::load(
        &store_path(dir).with_extension("datakeys"),
        None,
    )
    .unwrap();
    assert!(data_keys.get(&revoked).is_none());
    scenario.teardown();
}
