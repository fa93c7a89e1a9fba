//! The audit log's integrity on the real server: a decision whose line cannot be written
//! (a full disk) is not carried out and the log is never torn; `audit verify` with the key
//! and the recorded head detects a cut, edited, reordered, inserted or recomputed log; the
//! log follows rotation (SIGHUP, rename, removal) with a link to the old file; suppressed
//! refusals are summed up at shutdown without a policy file.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use token_authority::pb;
use token_authority_jose::crypto::mac::MacKey;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

use crate::{
    binary::{run_command, spawn_binary},
    helpers::{
        admin, config, connect, endpoint, metric, wait_for_sled_release, write_private, DataDir,
        TestServer,
    },
};

/// 32 bytes (0, 1, ..., 31) in standard base64, as `openssl rand -base64 32` prints a key.
const AUDIT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SERVICE: &str = "tokenauthority.v1.TokenAuthority";

fn key_file(dir: &DataDir) -> PathBuf {
    let path = dir.path.parent().unwrap().join("audit.key");
    write_private(&path, format!("{AUDIT_KEY}\n"));
    path
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn service_status(server: &TestServer) -> ServingStatus {
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        endpoint(server.grpc_addr, None).connect_lazy(),
    );
    let response = health
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap();
    response.into_inner().status()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small tmpfs of its own at `at`, unmounted when dropped.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        // As root directly; otherwise through passwordless sudo, owned by this user.
        let uid = rustix::process::geteuid();
        let options = format!(
            "size=64k,mode=0700,uid={},gid={}",
            uid.as_raw(),
            rustix::process::getegid().as_raw()
        );
        let mut command = sudo_unless_root("mount");
        command
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(at);
        let mounted = command.status().unwrap();
        assert!(
            mounted.success(),
            "this test needs to mount a small tmpfs (root, passwordless sudo, or CAP_SYS_ADMIN)"
        );
        SmallDisk { at: at.to_owned() }
    }

    /// Fills the disk to the last byte.
    fn fill(&self) -> PathBuf {
        let filler = self.at.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for chunk in [4096, 1] {
            while file.write_all(&vec![b'x'; chunk]).is_ok() {}
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = sudo_unless_root("umount").arg(&self.at).status();
    }
}

fn sudo_unless_root(program: &str) -> Command {
    if rustix::process::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.args(["-n", program]);
        command
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_decisions_until_it_has_room_and_never_tears_a_line() {
    let dir = DataDir::new();
    let disk = SmallDisk::mount(&dir.path.parent().unwrap().join("small"));
    let audit_path = disk.at.join("audit.log");
    let server =
        TestServer::start_with(config(&dir, &["--audit-log", audit_path.to_str().unwrap()])).await;
    server.issue("before", &["a"]).await;

    let filler = disk.fill();
    // The file's last page may still take a line or two; then every decision is refused.
    // (How many fit depends on the lines' length: a token with a status has a longer jti.)
    let mut refused = 0;
    for _ in 0..50 {
        match server
            .client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: "during".into(),
                audience: vec!["a".into()],
                ..Default::default()
            })
            .await
        {
            Ok(_) => assert_eq!(refused, 0, "a token was issued after a refusal"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert_eq!(status.message(), "audit log not writable");
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 40,
        "only {refused} of 50 calls refused on a full disk"
    );
    // A shorter line may still fit where an IssueToken line did not: ListKeys lines take
    // what is left, then every one is refused too.
    let mut listed_refused = 0;
    for _ in 0..50 {
        match server
            .client
            .clone()
            .list_keys(admin(pb::ListKeysRequest {}))
            .await
        {
            Ok(_) => assert_eq!(listed_refused, 0, "ListKeys answered after a refusal"),
            Err(status) => {
                assert_eq!(
                    (status.code(), status.message()),
                    (tonic::Code::Unavailable, "audit log not writable")
                );
                listed_refused += 1;
            }
        }
    }
    assert!(
        listed_refused >= 40,
        "only {listed_refused} of 50 ListKeys refused on a full disk"
    );
    let before = crate::helpers::kids(&server.http_jwks().await);
    let rotation = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (rotation.code(), rotation.message()),
        (tonic::Code::Unavailable, "audit log not writable")
    );
    assert_eq!(
        crate::helpers::kids(&server.http_jwks().await),
        before,
        "rotated anyway"
    );
    // Health follows the log's state from a task of its own: it may be a moment behind.
    until("the service to report NOT_SERVING", || async {
        service_status(&server).await == ServingStatus::NotServing
    })
    .await;
    assert_eq!(
        server
            .http
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        metric(&server, "token_authority_audit_unrecorded_decisions_total").await,
        f64::from(refused + listed_refused + 1)
    );
    assert_eq!(
        metric(&server, "token_authority_audit_log_writable").await,
        0.0
    );

    std::fs::remove_file(filler).unwrap();
    server.issue("after", &["a"]).await;
    until("the service to report SERVING again", || async {
        service_status(&server).await == ServingStatus::Serving
    })
    .await;
    assert_eq!(
        metric(&server, "token_authority_audit_log_writable").await,
        1.0
    );
    server.stop().await;

    // Every line whole, the chain intact, and no refused call left a line.
    let lines = json_lines(&audit_path);
    let subjects: Vec<&str> = lines
        .iter()
        .filter(|l| l["method"] == "IssueToken")
        .filter_map(|l| l["subject"].as_str())
        .collect();
    assert_eq!(subjects.first(), Some(&"before"));
    assert_eq!(subjects.last(), Some(&"after"));
    assert_eq!(subjects.len(), 2 + 50 - refused as usize);
    let (ok, text) = run_command(&["audit", "verify", audit_path.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.starts_with(&format!(
        "{}: {} line(s), chain intact",
        audit_path.display(),
        lines.len()
    )));
}

/// Re-tags lines `from..` (0-based) as someone without the audit key would: each `prev`
/// pointing at the line before, each tag a MAC under another key (or a plain hash).
fn recompute(lines: &mut [String], from: usize, forger: Option<&MacKey>) {
    for index in from..lines.len() {
        let member = if lines[index].contains(",\"mac\":\"") {
            ",\"mac\":\""
        } else {
            ",\"hash\":\""
        };
        let covered = &lines[index][..lines[index].rfind(member).unwrap()];
        let prev_tag = |line: &str| {
            let value: Value = serde_json::from_str(line).unwrap();
            value["mac"]
                .as_str()
                .or(value["hash"].as_str())
                .unwrap()
                .to_owned()
        };
        let old_prev = serde_json::from_str::<Value>(&lines[index]).unwrap()["prev"]
            .as_str()
            .unwrap()
            .to_owned();
        let covered = if index > 0 {
            covered.replace(&old_prev, &prev_tag(&lines[index - 1]))
        } else {
            covered.to_owned()
        };
        lines[index] = match forger {
            Some(key) => format!(
                "{covered},\"mac\":\"{}\"}}",
                hex(&key.sign(covered.as_bytes()))
            ),
            None => format!(
                "{covered},\"hash\":\"{}\"}}",
                hex(&token_authority_jose::crypto::sha256(covered.as_bytes()))
            ),
        };
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn audit_verify_detects_cut_edited_reordered_inserted_and_recomputed_logs() {
    let dir = DataDir::new();
    let key = key_file(&dir);
    let cases_dir = dir.path.parent().unwrap().join("cases");
    std::fs::create_dir(&cases_dir).unwrap();
    let audit_path = dir.path.parent().unwrap().join("audit.log");
    let server = TestServer::start_with(config(
        &dir,
        &[
            "--audit-log",
            audit_path.to_str().unwrap(),
            "--audit-key-file",
            key.to_str().unwrap(),
        ],
    ))
    .await;
    for _ in 0..6 {
        server
            .client
            .clone()
            .list_keys(admin(pb::ListKeysRequest {}))
            .await
            .unwrap();
    }
    server.stop().await;
    wait_for_sled_release(&dir.path.join("keystore"));

    let text = std::fs::read_to_string(&audit_path).unwrap();
    let original: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(original.len(), 7);
    let file_id = serde_json::from_str::<Value>(&original[0]).unwrap()["file"]
        .as_str()
        .unwrap()
        .to_owned();
    let forger = MacKey::new(&[0x5a; 32]);
    let edit = |lines: &mut Vec<String>| {
        lines[1] = lines[1].replace("\"admin\"", "\"someone-else\"");
    };
    let mut cases: Vec<(&str, Vec<String>, bool, String)> = Vec::new();
    let intact =
        format!("7 line(s), chain intact; the recorded head (line 7 of file {file_id}) is in it");
    cases.push(("intact", original.clone(), true, intact));
    cases.push((
        "last-2-removed",
        original[..5].to_vec(),
        false,
        "chain broken at line 6: missing: the recorded head is at line 7 (the tail was cut)".into(),
    ));
    cases.push((
        "first-3-removed",
        original[3..].to_vec(),
        false,
        "chain broken at line 1: is not an opening line (the head of the file was cut)".into(),
    ));
    cases.push((
        "empty",
        Vec::new(),
        false,
        "chain broken at line 1: missing: the file is empty (every file the authority opens starts with an opening line)".into(),
    ));
    let mut edited = original.clone();
    edit(&mut edited);
    cases.push((
        "line-2-edited",
        edited.clone(),
        false,
        "chain broken at line 2: its MAC does not match its content (edited, forged, or another key)".into(),
    ));
    let mut recomputed = edited.clone();
    recompute(&mut recomputed, 1, Some(&forger));
    cases.push((
        "line-2-edited-later-macs-recomputed-with-another-key",
        recomputed,
        false,
        "chain broken at line 2: its MAC does not match its content (edited, forged, or another key)".into(),
    ));
    let mut rehashed = edited.clone();
    recompute(&mut rehashed, 1, None);
    cases.push((
        "line-2-edited-later-lines-rehashed",
        rehashed,
        false,
        "chain broken at line 2: carries a plain hash where the lines before carry MACs (forged)"
            .into(),
    ));
    let mut all_recomputed = edited.clone();
    recompute(&mut all_recomputed, 0, Some(&forger));
    cases.push((
        "every-line-recomputed-with-another-key",
        all_recomputed,
        false,
        "chain broken at line 1: its MAC does not match its content (edited, forged, or another key)".into(),
    ));
    let mut reordered = original.clone();
    reordered.swap(2, 3);
    cases.push((
        "lines-3-and-4-reordered",
        reordered,
        false,
        "chain broken at line 3: its prev is not the tag of the line before (a line was removed, inserted or reordered)".into(),
    ));
    let mut inserted = original.clone();
    inserted.insert(3, original[2].clone());
    cases.push((
        "line-3-inserted-again",
        inserted,
        false,
        "chain broken at line 4: its prev is not the tag of the line before (a line was removed, inserted or reordered)".into(),
    ));
    let mut removed = original.clone();
    removed.remove(3);
    cases.push((
        "line-4-removed",
        removed,
        false,
        "chain broken at line 4: its prev is not the tag of the line before (a line was removed, inserted or reordered)".into(),
    ));

    let data_dir = dir.path.to_str().unwrap();
    let mut results = Vec::new();
    let mut expected = Vec::new();
    for (name, lines, ok, message) in cases {
        let path = cases_dir.join(name);
        std::fs::write(
            &path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        let (passed, text) = run_command(&[
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--audit-key-file",
            key.to_str().unwrap(),
            "--data-dir",
            data_dir,
        ]);
        results.push((name, passed, text.trim().to_owned()));
        expected.push((name, ok, format!("{}: {message}", path.display())));
    }
    assert_eq!(results, expected);

    // Without the key or the keystore, it says what it could not check.
    let (passed, text) = run_command(&[
        "audit",
        "verify",
        audit_path.to_str().unwrap(),
        "--data-dir",
        data_dir,
    ]);
    assert_eq!(
        (passed, text.trim()),
        (
            true,
            format!(
                "{}: 7 line(s), chain intact; the recorded head (line 7 of file {file_id}) is in it\n  not checked: MACs (no --audit-key-file: an edited line with a recomputed chain is not detected)",
                audit_path.display()
            )
            .as_str()
        )
    );
    let (passed, text) = run_command(&[
        "audit",
        "verify",
        audit_path.to_str().unwrap(),
        "--audit-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(
        (passed, text.trim()),
        (
            true,
            format!(
                "{}: 7 line(s), chain intact\n  not checked: the tail (no --data-dir or --store with its recorded head: a cut tail is not detected)",
                audit_path.display()
            )
            .as_str()
        )
    );
    // A key file a Kubernetes Secret volume mounted group-readable: refused, as by serve,
    // unless --allow-group-readable-files says the platform sets such modes.
    let shared_key = key.with_file_name("audit-key-0640");
    std::fs::copy(&key, &shared_key).unwrap();
    std::fs::set_permissions(
        &shared_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let with_shared_key = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            audit_path.to_str().unwrap(),
            "--audit-key-file",
            shared_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_command(&args)
    };
    let (passed, text) = with_shared_key(&[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("is accessible to group or others (mode 0640)"),
        "{text}"
    );
    let (passed, text) = with_shared_key(&["--allow-group-readable-files"]);
    assert!(passed, "{text}");
    assert!(text.contains("7 line(s), chain intact"), "{text}");

    // Against another authority's keystore: no head for this file.
    let other = DataDir::new();
    TestServer::start(&other).await.stop().await;
    wait_for_sled_release(&other.path.join("keystore"));
    let (passed, text) = run_command(&[
        "audit",
        "verify",
        audit_path.to_str().unwrap(),
        "--audit-key-file",
        key.to_str().unwrap(),
        "--data-dir",
        other.path.to_str().unwrap(),
    ]);
    assert_eq!(
        (passed, text.trim()),
        (
            false,
            format!(
                "{}: no head is recorded for this file (id {file_id}) in the keystore given: it was not written by an authority over that keystore",
                audit_path.display()
            )
            .as_str()
        )
    );
}

fn opening(path: &Path) -> Value {
    json_lines(path).into_iter().next().unwrap()
}

#[tokio::test]
async fn the_log_follows_rotation_by_sighup_rename_and_removal_linked_to_the_old_file() {
    let dir = DataDir::new();
    let key = key_file(&dir);
    let logs = dir.path.parent().unwrap();
    let audit_path = logs.join("audit.log");
    let mut process = spawn_binary(
        &dir,
        &[
            "--audit-log",
            audit_path.to_str().unwrap(),
            "--audit-key-file",
            key.to_str().unwrap(),
            "--audit-sync",
        ],
    );
    let client = connect(&process.grpc).await;
    let issue = |subject: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    subject: subject.into(),
                    audience: vec!["a".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    issue("first").await;

    // logrotate's default: rename, then SIGHUP.
    std::fs::rename(&audit_path, logs.join("audit.log.1")).unwrap();
    let pid = process.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    until("the reopened log", || {
        let path = audit_path.clone();
        async move { std::fs::read_to_string(&path).is_ok_and(|text| text.ends_with('\n')) }
    })
    .await;
    issue("second").await;
    let second_id = opening(&audit_path)["file"].as_str().unwrap().to_owned();
    // Removed without a signal: the next line notices.
    std::fs::remove_file(&audit_path).unwrap();
    issue("third").await;
    process.terminate();

    let first = logs.join("audit.log.1");
    let first_lines = json_lines(&first);
    assert_eq!(first_lines[1]["subject"], "first");
    let third_lines = json_lines(&audit_path);
    assert_eq!(third_lines[1]["subject"], "third");
    assert_eq!(third_lines[0]["event"], "open");
    assert_eq!(third_lines[0]["predecessor"], second_id.as_str());
    assert_eq!(third_lines[0]["predecessor_lines"], 2);
    for path in [&first, &audit_path] {
        let (ok, text) = run_command(&[
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--audit-key-file",
            key.to_str().unwrap(),
            "--data-dir",
            dir.path.to_str().unwrap(),
        ]);
        let id = opening(path)["file"].as_str().unwrap().to_owned();
        let lines = json_lines(path).len();
        assert_eq!(
            (ok, text.trim().to_owned()),
            (
                true,
                format!(
                    "{}: {lines} line(s), chain intact; the recorded head (line {lines} of file {id}) is in it",
                    path.display()
                )
            )
        );
    }
}

#[tokio::test]
async fn suppressed_refusals_are_summed_up_at_shutdown_without_a_policy_file() {
    let dir = DataDir::new();
    let audit_path = dir.path.parent().unwrap().join("audit.log");
    let server =
        TestServer::start_with(config(&dir, &["--audit-log", audit_path.to_str().unwrap()])).await;
    const FLOOD: u64 = 100;
    for _ in 0..FLOOD {
        let refused = server
            .client
            .clone()
            .list_keys(pb::ListKeysRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), refused.message()),
            (
                tonic::Code::Unauthenticated,
                "admin RPCs need metadata `authorization: Bearer <admin token>`"
            ),
        );
    }
    server.stop().await;
    let lines = json_lines(&audit_path);
    let written = lines.iter().filter(|l| l["outcome"] == "refused").count() as u64;
    let summed: u64 = lines
        .iter()
        .filter(|l| l["event"] == "suppressed")
        .map(|l| l["reasons"]["no_credentials"].as_u64().unwrap())
        .sum();
    assert!(
        written < FLOOD,
        "{written} refused lines: none was suppressed"
    );
    assert_eq!(written + summed, FLOOD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_record_their_heads_in_postgresql_while_running_and_a_cut_tail_is_found() {
    let shared = crate::postgres::Store::postgres().await;
    let url = shared.pg().url();
    let (a, b) = (DataDir::new(), DataDir::new());
    let key = key_file(&a);
    let logs = [
        a.path.parent().unwrap().join("audit.log"),
        b.path.parent().unwrap().join("audit.log"),
    ];
    let mut servers = Vec::new();
    for (dir, log) in [(&a, &logs[0]), (&b, &logs[1])] {
        servers.push(
            TestServer::start_with(shared.config(
                dir,
                &[
                    "--audit-log",
                    log.to_str().unwrap(),
                    "--audit-key-file",
                    key.to_str().unwrap(),
                ],
            ))
            .await,
        );
    }
    for server in &servers {
        for _ in 0..3 {
            server.issue("someone", &["a"]).await;
        }
    }
    let verify = |log: &Path| {
        run_command(&[
            "audit",
            "verify",
            log.to_str().unwrap(),
            "--audit-key-file",
            key.to_str().unwrap(),
            "--store",
            &url,
        ])
    };
    // While they run: each replica's head reaches its last line within a second or so.
    for log in &logs {
        until("the head of a running replica", || {
            let (ok, text) = verify(log);
            async move { ok && text.contains("the recorded head (line 4 of file") }
        })
        .await;
    }
    for server in servers {
        server.stop().await;
    }
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&logs[0], cut).unwrap();
    let (ok, text) = verify(&logs[0]);
    assert_eq!(
        (ok, text.trim().to_owned()),
        (
            false,
            format!(
                "{}: chain broken at line 3: missing: the recorded head is at line 4 (the tail was cut)",
                logs[0].display()
            )
        )
    );
}

#[tokio::test]
async fn an_audit_key_file_others_can_read_or_of_the_wrong_size_stops_the_start() {
    let dir = DataDir::new();
    dir.create();
    let audit = dir.path.parent().unwrap().join("audit.log");
    let key = dir.path.parent().unwrap().join("audit.key");
    let cases: [(&str, u32, String); 3] = [
        (
            AUDIT_KEY,
            0o644,
            format!(
                "the audit key file {0} is accessible to group or others (mode 0644); run `chmod 600 {0}`, or start with --allow-group-readable-files (TA_ALLOW_GROUP_READABLE_FILES=true) where the platform sets these modes",
                key.display()
            ),
        ),
        (
            "c2hvcnQ=",
            0o600,
            format!(
                "the audit key file {} must hold one standard-base64 line of exactly 32 bytes (openssl rand -base64 32)",
                key.display()
            ),
        ),
        (
            "not base64!",
            0o600,
            format!(
                "the audit key file {} must hold one standard-base64 line of exactly 32 bytes (openssl rand -base64 32)",
                key.display()
            ),
        ),
    ];
    for (content, mode, message) in cases {
        std::fs::write(&key, content).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let (server, result) = TestServer::try_start(config(
            &dir,
            &[
                "--audit-log",
                audit.to_str().unwrap(),
                "--audit-key-file",
                key.to_str().unwrap(),
            ],
        ))
        .await;
        assert!(server.is_none());
        assert_eq!(result.unwrap_err().to_string(), message);
    }
}

/// The chain needs a file it can read back and cut: a FIFO would hold the start on its first
/// read, and a device would take every line and keep none. The real binary, so that a start
/// that hangs fails the test instead of holding it.
#[tokio::test]
async fn an_audit_log_that_is_not_a_regular_file_stops_the_start() {
    let dir = DataDir::new();
    let fifo = dir.path.parent().unwrap().join("audit.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let not_a_file = "not a regular file (a FIFO, device or socket); name a file, or - for stderr";
    let cases = [
        (fifo.to_str().unwrap(), not_a_file),
        ("/dev/null", not_a_file),
        ("/", "Is a directory (os error 21)"),
    ];
    for (path, reason) in cases {
        let output =
            crate::binary::serve_until_it_stops(&dir.path, &["--audit-log", path], &[], path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{path}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot open the audit log {path}: {reason}")),
            "{path}: {stderr}"
        );
    }
}
