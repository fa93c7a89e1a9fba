//! Three replicas on one PostgreSQL database: issuing concurrently, no index is handed out
//! twice over 30,000 tokens (lists rolling over as they fill), and a status set on one
//! replica is refused by the others within 2 s.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use token_authority::pb::{self, TokenStatus, VerifyFailureReason as Reason};
use tonic::Code;

use super::{list_id, reference, set_request, verdict};
use crate::{
    helpers::{admin, DataDir, TestServer},
    postgres::Store,
};

const TOKENS: usize = 30_000;
const TASKS_PER_REPLICA: usize = 16;

async fn replicas(shared: &Store, dirs: &[DataDir]) -> Vec<TestServer> {
    replicas_of_lists(shared, dirs, "4096").await
}

/// Replicas whose lists hold `size` statuses (a block is at most a list).
async fn replicas_of_lists(shared: &Store, dirs: &[DataDir], size: &str) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for dir in dirs {
        servers.push(
            TestServer::start_with(
                shared.config(dir, &["--algorithms", "ES256", "--status-list-size", size]),
            )
            .await,
        );
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_hand_out_an_index_twice_and_follow_each_others_statuses() {
    let shared = Store::postgres().await;
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let servers = Arc::new(replicas(&shared, &dirs).await);
    // A client verifier watching replica 2.
    let local = token_authority_client::Verifier::connect(
        crate::helpers::endpoint(servers[2].grpc_addr, None).connect_lazy(),
        token_authority_client::VerifierSettings::new(servers[2].issuer.clone()),
    )
    .await
    .unwrap();

    let per_task = TOKENS / (servers.len() * TASKS_PER_REPLICA);
    let mut tasks = Vec::new();
    for replica in 0..servers.len() {
        for _ in 0..TASKS_PER_REPLICA {
            let servers = Arc::clone(&servers);
            tasks.push(tokio::spawn(async move {
                let mut client = servers[replica].client.clone();
                let mut held = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let issued = client
                        .issue_token(pb::IssueTokenRequest {
                            subject: "svc".into(),
                            audience: vec!["ledger".into()],
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let at = reference(&issued.token).unwrap();
                    held.push((list_id(&at), at.idx, issued.jti, issued.token));
                }
                held
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut issued = Vec::new();
    for task in tasks {
        for (list, idx, jti, token) in task.await.unwrap() {
            assert!(idx < 4096);
            assert!(
                seen.insert((list, idx)),
                "index {idx} of list {list} was handed out twice"
            );
            issued.push((jti, token));
        }
    }
    assert_eq!(seen.len(), per_task * servers.len() * TASKS_PER_REPLICA);
    let lists: HashSet<u64> = seen.iter().map(|(list, _)| *list).collect();
    assert!(
        lists.len() >= 7,
        "30,000 indexes of lists of 4,096 fill at least 7: {lists:?}"
    );

    // Revoked on replica 0 (a token replica 2 issued, by jti), suspended on replica 1: the
    // other replicas refuse each within 2 s.
    let (jti, revoked) = issued.last().unwrap().clone();
    let (_, suspended) = issued.first().unwrap().clone();
    // A jti carries its list and index: any replica finds it, at once.
    servers[0]
        .client
        .clone()
        .set_token_status(admin(set_request(&jti, TokenStatus::Invalid)))
        .await
        .unwrap();
    let at = reference(&suspended).unwrap();
    servers[1]
        .client
        .clone()
        .set_token_status(admin(super::at_index(
            list_id(&at),
            at.idx,
            TokenStatus::Suspended,
        )))
        .await
        .unwrap();
    let changed = Instant::now();
    for (token, reason) in [
        (&revoked, Reason::RevokedToken),
        (&suspended, Reason::SuspendedToken),
    ] {
        for server in servers.iter() {
            loop {
                let got = verdict(server, token).await;
                if got == reason {
                    break;
                }
                assert_eq!(got, Reason::Unspecified);
                assert!(
                    changed.elapsed() < Duration::from_secs(2),
                    "{} still says valid",
                    server.grpc_addr
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // And the client's verifier, from the lists replica 2 pushed.
    use token_authority_client::Reason as Local;
    for (token, reason) in [
        (&revoked, Local::RevokedToken),
        (&suspended, Local::SuspendedToken),
    ] {
        loop {
            match local.verify(token) {
                Err(rejection) if rejection.reason == reason => break,
                other => {
                    assert!(other.is_ok(), "{other:?}");
                    assert!(
                        changed.elapsed() < Duration::from_secs(2),
                        "the verifier still says {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    // Revoked is final on every replica, whichever asks.
    for server in servers.iter() {
        let error = server
            .client
            .clone()
            .set_token_status(admin(set_request(&jti, TokenStatus::Valid)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    }
    let Ok(servers) = Arc::try_unwrap(servers) else {
        panic!("a task still holds the servers")
    };
    for server in servers {
        server.stop().await;
    }
}

/// Replica 0 cannot know which indexes of replica 1's block replica 1 has handed out (they
/// go in a random order), so it takes a status set there by index; replica 1 then passes
/// over those indexes: no token is born revoked or suspended. Lists of 16, so that every
/// index of replica 1's block but its token's can be given a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_given_a_status_before_its_token_is_never_handed_out() {
    const SIZE: u64 = 16;
    let shared = Store::postgres().await;
    let dirs: Vec<DataDir> = (0..2).map(|_| DataDir::new()).collect();
    let servers = replicas_of_lists(&shared, &dirs, &SIZE.to_string()).await;
    let first = reference(
        &super::issue_for(&servers[0], "svc", super::LONG)
            .await
            .token,
    )
    .unwrap();
    let other = reference(
        &super::issue_for(&servers[1], "svc", super::LONG)
            .await
            .token,
    )
    .unwrap();
    let list = list_id(&other);
    assert_ne!(
        list_id(&first),
        list,
        "each replica its own block, here a list"
    );
    // Replica 0 refuses what is ahead in its own block...
    let own_ahead = (0..SIZE).find(|&idx| idx != first.idx).unwrap();
    let own = servers[0]
        .client
        .clone()
        .set_token_status(admin(super::at_index(
            list_id(&first),
            own_ahead,
            TokenStatus::Invalid,
        )))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::NotFound, "{own:?}");
    // ...and takes every index of replica 1's that replica 1's token does not hold.
    let given: Vec<(u64, TokenStatus)> = (0..SIZE)
        .filter(|&idx| idx != other.idx)
        .map(|idx| {
            let status = if idx % 2 == 0 {
                TokenStatus::Invalid
            } else {
                TokenStatus::Suspended
            };
            (idx, status)
        })
        .collect();
    for (idx, status) in &given {
        servers[0]
            .client
            .clone()
            .set_token_status(admin(super::at_index(list, *idx, *status)))
            .await
            .unwrap();
    }
    // Once replica 1 serves them all (within 2 s), its next token passes over every one:
    // its block has no index left, and the token takes one of a new block.
    let changed = Instant::now();
    loop {
        let served = servers[1]
            .http
            .get(servers[1].url(&format!("/statuslists/{list}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let claims = super::payload(&served);
        let statuses = token_authority_jose::status_list::StatusList::from_claim(
            &claims["status_list"],
            token_authority_jose::status_list::DEFAULT_MAX_INFLATED,
        )
        .unwrap();
        let all_served = given.iter().all(|(idx, _)| {
            statuses.get(*idx).unwrap() != token_authority_jose::status_list::Status::Valid
        });
        if all_served {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "replica 1 does not serve the statuses"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = super::issue_for(&servers[1], "svc", super::LONG).await;
    let at = reference(&next.token).unwrap();
    assert_ne!(
        list_id(&at),
        list,
        "{at:?} is in the list whose indexes were given statuses"
    );
    assert_eq!(verdict(&servers[1], &next.token).await, Reason::Unspecified);
    for server in servers {
        server.stop().await;
    }
}
