//! Starting a replica on a database that refuses it, or is not there yet: a refusal no
//! retry can cure stops the start with exit code 2 and one line naming the cause in
//! PostgreSQL's own words; a database that is down is waited for, with the health checks
//! answering NOT_SERVING (and 503) meanwhile.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

use crate::{
    binary::BIN,
    helpers::{DataDir, TestServer},
    postgres::Store,
};

/// `serve` on `url` with the test's KEK: the exit code and stderr, or a panic when it has
/// not stopped within 30 s (a start that retries a permanent refusal never does).
fn serve_until_exit(shared: &Store, url: &str) -> (Option<i32>, String) {
    let dir = DataDir::new();
    let mut child = Command::new(BIN)
        .env_remove("RUST_LOG")
        .args(["serve", "--data-dir", dir.path.to_str().unwrap()])
        .args(["--admin-token-file", dir.admin_token_file.to_str().unwrap()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--store", url, "--kek-file", shared.kek()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after 30 s on {url}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_the_replica_stops_the_start_with_exit_code_2() {
    let shared = Arc::new(Store::postgres().await);
    let pg = shared.pg();
    pg.psql("CREATE ROLE ta_pw LOGIN PASSWORD 'right'");
    pg.require_password("ta_pw");
    // A role that may create tables but was granted nothing on the replicas' own.
    pg.psql("CREATE ROLE ta_nogrant LOGIN");
    pg.psql("GRANT CREATE ON SCHEMA public TO ta_nogrant");
    // The schema exists, owned by `postgres`: a replica created it.
    let dir = DataDir::new();
    TestServer::start_with(shared.config(&dir, &["--algorithms", "ES256"]))
        .await
        .stop()
        .await;

    let port = pg.port;
    let refused = "error: the keystore database refuses this replica (permanent, not retried; fix the settings or grants): postgres database";
    let cases = [
        (
            format!("postgres://ta_pw:wrong@127.0.0.1:{port}/postgres"),
            format!("{refused} \"postgres\" on 127.0.0.1: password authentication failed for user \"ta_pw\" (SQLSTATE 28P01)"),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/no_such_db"),
            format!("{refused} \"no_such_db\" on 127.0.0.1: database \"no_such_db\" does not exist (SQLSTATE 3D000)"),
        ),
        (
            format!("postgres://no_such_role@127.0.0.1:{port}/postgres"),
            format!("{refused} \"postgres\" on 127.0.0.1: role \"no_such_role\" does not exist (SQLSTATE 28000)"),
        ),
        (
            format!("postgres://ta_nogrant@127.0.0.1:{port}/postgres"),
            format!("{refused} \"postgres\" on 127.0.0.1: permission denied for table ta_schema_version (SQLSTATE 42501)"),
        ),
    ];
    for (url, line) in cases {
        let (code, stderr) = {
            let shared = Arc::clone(&shared);
            let url = url.clone();
            tokio::task::spawn_blocking(move || serve_until_exit(&shared, &url))
                .await
                .unwrap()
        };
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(
            stderr.lines().any(|l| l == line),
            "{url}: no line\n{line}\nin:\n{stderr}"
        );
    }
}

/// Started with its database down, a replica answers health checks at once: NOT_SERVING
/// (HTTP 503) while it retries, SERVING once the database is back and the keys are loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_not_serving_while_the_database_is_reached() {
    let shared = Arc::new(Store::postgres().await);
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    let dir = DataDir::new();
    let config = shared.config(&dir, &["--algorithms", "ES256"]);
    let listeners =
        token_authority::server::Listeners::bind(config.grpc_listen, config.http_listen)
            .await
            .unwrap();
    let (grpc, http) = (
        listeners.grpc.local_addr().unwrap(),
        listeners.http.local_addr().unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(token_authority::server::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let web = reqwest::Client::new();
    let get = |path: &str| {
        let request = web.get(format!("http://{http}{path}")).send();
        async move { tokio::time::timeout(Duration::from_secs(2), request).await }
    };
    // For 2 s of retries: every check answered, every answer NOT_SERVING.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for service in ["", "tokenauthority.v1.TokenAuthority"] {
            let answer = tokio::time::timeout(Duration::from_secs(2), health.check(check(service)))
                .await
                .expect("the health check did not answer while the database is down")
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.status,
                ServingStatus::NotServing as i32,
                "{service:?}"
            );
        }
        for path in ["/healthz", "/readyz"] {
            let response = get(path).await.expect("no HTTP answer").unwrap();
            assert_eq!(response.status(), 503, "{path}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().restart())
            .await
            .unwrap();
    }
    let started = Instant::now();
    loop {
        let answer = health.check(check("")).await.unwrap().into_inner();
        if answer.status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not SERVING 20 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/healthz", "/readyz", "/.well-known/jwks.json"] {
        let response = get(path).await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
