//! Status lists over days of paused time: a list is kept, and its statuses with it, until
//! every token holding one of its indexes has expired, then the purge drops it; the list
//! being filled and the one made ahead stay. SetTokenStatus then finds nothing of it.

use std::sync::Arc;

use tonic::{metadata::MetadataValue, Code, Request};

use super::{clock_at, settings, InProcess, AUDIENCE, HOUR, ISSUER, LEEWAY};
use crate::{
    authority::status::{StatusLists, StatusSettings, STATUS_LISTS_PATH},
    pb::{self, token_authority_client::TokenAuthorityClient, TokenStatus},
    store::status::StatusStore,
};

/// Statuses per list, and so per block: the 17th token rolls over to list 2.
const SIZE: u64 = 16;

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = "Bearer in-process-admin-token".parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn set(target: (u64, u64), status: TokenStatus) -> pb::SetTokenStatusRequest {
    pb::SetTokenStatusRequest {
        list_id: target.0,
        index: target.1,
        status: status as i32,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_list_is_dropped_with_its_statuses_once_its_last_token_has_expired() {
    let clock = clock_at(0);
    let server = InProcess::start(settings(clock));
    let lists = StatusLists::open(
        StatusStore::of(server.authority.store()),
        StatusSettings {
            min_ttl: Some(600),
            list_size: SIZE,
            list_ttl: 60,
            uri_prefix: format!("{ISSUER}{STATUS_LISTS_PATH}"),
            max_ttl: HOUR,
            leeway: LEEWAY,
        },
        clock.unix_now(),
    )
    .await
    .unwrap();
    let lists = Arc::new(lists);
    server.authority.attach_status_lists(Arc::clone(&lists));
    let purge = tokio::spawn(super::super::tasks::purge_status_lists(
        Arc::clone(&server.authority),
        Arc::clone(&lists),
        server.stop.clone(),
    ));
    let mut client = TokenAuthorityClient::new(server.channel());
    let issue = async || {
        client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: "orders".into(),
                audience: vec![AUDIENCE.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let mut first_list = Vec::new();
    for _ in 0..SIZE {
        first_list.push(issue().await);
    }
    let on_second = issue().await;
    // Its index in list 2, handed out in a random order.
    let second_idx = {
        use base64::Engine as _;
        let payload = on_second.token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        token_authority_jose::status_list::StatusReference::from_claims(claims.as_object().unwrap())
            .unwrap()
            .unwrap()
            .idx
    };
    assert_eq!(lists.ids(), [1, 2, 3]);
    client
        .set_token_status(admin(pb::SetTokenStatusRequest {
            jti: first_list[3].jti.clone(),
            status: TokenStatus::Invalid as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    client
        .set_token_status(admin(set((2, second_idx), TokenStatus::Suspended)))
        .await
        .unwrap();
    let last_exp = first_list.last().unwrap().expires_at.unwrap().seconds as u64;

    // Past the last token's exp and the leeway, but within the 5 minutes a block may be
    // used for: list 1 stays, its revocation with it.
    tokio::time::sleep(std::time::Duration::from_secs(HOUR + LEEWAY + 60)).await;
    assert!(clock.unix_now() > last_exp + LEEWAY);
    assert_eq!(lists.ids(), [1, 2, 3]);
    // Then the purge (every 10 minutes) drops it; list 2 is being filled and list 3 was
    // made ahead: they stay, with list 2's suspension.
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert_eq!(lists.ids(), [2, 3]);
    let census = lists.census();
    assert_eq!((census.revoked, census.suspended), (0, 1));
    let store = StatusStore::of(server.authority.store());
    let (stored, _) = store.load().await.unwrap();
    let ids: Vec<u64> = stored.lists.iter().map(|list| list.id).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(stored.statuses, [(2, second_idx, 2)]);
    // Nothing of list 1 can be named any more: by jti (its token expired), or by index.
    let by_jti = client
        .set_token_status(admin(pb::SetTokenStatusRequest {
            jti: first_list[3].jti.clone(),
            status: TokenStatus::Valid as i32,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(by_jti.code(), Code::NotFound, "{by_jti:?}");
    let by_index = client
        .set_token_status(admin(set((1, 3), TokenStatus::Valid)))
        .await
        .unwrap_err();
    assert_eq!(
        (by_index.code(), by_index.message()),
        (Code::NotFound, "status list 1 does not exist")
    );
    assert!(on_second.jti.len() > 22);
    server.stop().await;
    purge.await.unwrap();
}
