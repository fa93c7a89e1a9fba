//! WatchKeys against clients that never open their HTTP/2 window, on the real binary and
//! measured from outside: waves of stalled watchers from raw h2 clients (stream window 0,
//! never a WINDOW_UPDATE), a rotation per wave. Each is reset (RST_STREAM) when the server
//! drops it, the server's resident memory stays bounded however many waves come, and a
//! well-behaved watcher keeps getting every change meanwhile.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use token_authority::pb::{self, watch_keys_response::Event};
use tokio::{
    net::TcpSocket,
    task::{JoinHandle, JoinSet},
};
use tonic::Streaming;

use crate::{
    binary::{spawn_binary, Process},
    helpers::{admin, connect, DataDir},
};

/// Stalled watchers per wave, as in the attack measured in production: 1,000 every 43 s.
const WAVE: usize = 1000;
/// Source addresses a wave comes from (loopback has them all), each one connection.
const WAVE_ADDRESSES: usize = 4;
const WAVES: usize = 6;
/// What the server may grow by over the waves after the first. A wave of 1,000 stalled
/// streams left in place took about 25 MB; freed at once, the allocator reuses what the
/// first wave took and the figure stays within a few MB.
const GROWTH_BOUND_KB: u64 = 30 * 1024;

/// The server's resident set, from /proc.
fn rss_kb(process: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn metric(process: &Process, name: &str) -> f64 {
    let text = process.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Opens `count` WatchKeys streams on one connection from `source` that never take a byte.
/// Each task ends with the reset the client saw (`None`: the stream ended otherwise); the
/// connection stays open while the returned handle and task are held.
async fn stalled_watchers(
    server: SocketAddr,
    source: IpAddr,
    count: usize,
    streams: &mut JoinSet<Option<h2::Reason>>,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send;
    for _ in 0..count {
        send = send.ready().await.unwrap();
        let request = hyper::Request::post(format!(
            "http://{server}/tokenauthority.v1.TokenAuthority/WatchKeys"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        // An empty WatchKeysRequest: no compression, length 0.
        body.send_data(Bytes::from_static(&[0; 5]), true).unwrap();
        streams.spawn(async move {
            let response = response.await.ok()?;
            let mut body = response.into_body();
            match body.data().await {
                Some(Err(error)) => error.reason(),
                _ => None,
            }
        });
    }
    (send, connection)
}

/// The next key set a well-behaved watcher gets, skipping keepalives.
async fn next_set(stream: &mut Streaming<pb::WatchKeysResponse>) -> pb::WatchedKeySet {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the good watcher got nothing for 10 s")
            .expect("the good watcher's stream failed")
            .expect("the good watcher's stream ended");
        if let Some(Event::KeySet(set)) = message.event {
            return set;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_are_reset_and_their_memory_freed_at_once() {
    let dir = DataDir::new();
    // A stalled watcher takes its first message, then the keepalives fill its slot: it is
    // dropped about 300 ms after it opened.
    let process = spawn_binary(
        &dir,
        &[
            "--algorithms",
            "ES256",
            "--watch-keepalive",
            "100ms",
            "--watch-send-timeout",
            "100ms",
        ],
    );
    let server: SocketAddr = process.grpc.parse().unwrap();
    let mut client = connect(server).await;
    let mut good = client
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    next_set(&mut good).await;

    let mut streams = Vec::new();
    // The attacker keeps its connections open throughout.
    let mut connections = Vec::new();
    let mut rss = vec![rss_kb(&process)];
    for wave in 1..=WAVES {
        let mut wave_streams = JoinSet::new();
        for a in 0..WAVE_ADDRESSES {
            let source: IpAddr = format!("127.0.0.{}", 10 + a).parse().unwrap();
            connections.push(
                stalled_watchers(server, source, WAVE / WAVE_ADDRESSES, &mut wave_streams).await,
            );
        }
        let rotated = client
            .rotate_keys(admin(pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        // The good watcher sees the change during the attack.
        loop {
            let set = next_set(&mut good).await;
            let current = set
                .keys
                .iter()
                .find(|key| key.state() == pb::KeyState::Current);
            if current.is_some_and(|key| key.key_id == rotated.current_key_id) {
                break;
            }
        }
        let dropped = (wave * WAVE) as f64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(
            &process,
            r#"token_authority_key_watchers_refused_or_dropped_total{reason="slow"}"#,
        )
        .await
            < dropped
        {
            assert!(
                Instant::now() < deadline,
                "wave {wave}: the stalled watchers were not all dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rss.push(rss_kb(&process));
        streams.push(wave_streams);
    }
    println!("VmRSS (kB) at start and after each wave of {WAVE} stalled watchers: {rss:?}");
    let growth = rss[WAVES].saturating_sub(rss[1]);
    assert!(
        growth < GROWTH_BOUND_KB,
        "the server grew by {growth} kB over waves 2 to {WAVES}: {rss:?}"
    );

    // Every stalled watcher saw its stream reset; the connections themselves stay open.
    for (wave, mut wave_streams) in streams.into_iter().enumerate() {
        let mut resets = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(reason)) =
            tokio::time::timeout_at(deadline, wave_streams.join_next()).await
        {
            if reason.unwrap() == Some(h2::Reason::CANCEL) {
                resets += 1;
            }
        }
        assert_eq!(resets, WAVE, "wave {}: streams reset", wave + 1);
    }
    assert!(connections.iter().all(|(_, c)| !c.is_finished()));
}
