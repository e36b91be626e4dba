//! One suite every `GrantStore` passes, memory and Redis alike: codes are taken once, a
//! refresh token is spent once and a replay ends its family, revocations reach every token
//! they should and none they should not, and the bounds hold.

mod common;

use paygate_mcp::store::{
    token_digest, Client, ClientAuth, CodeGrant, CodeTaken, Grant, GrantLimits, Refreshed,
    TokenPair,
};
use paygate_mcp::{KeyDigest, KeyId, KeyStore};

const NOW: i64 = 1_773_568_800_000;

fn client(n: u32, at: i64) -> Client {
    Client {
        client_id: format!("pgc_{n}"),
        client_name: format!("client {n}"),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        auth: ClientAuth::None,
        created_ms: at,
        revoked: false,
        secret_digest: None,
    }
}

fn account(n: u8) -> KeyId {
    KeyId::derived(&KeyDigest::of(&format!("pg_{n:048x}")))
}

fn code_grant(client: u32, acct: u8) -> CodeGrant {
    CodeGrant {
        client_id: format!("pgc_{client}"),
        redirect_uri: "http://127.0.0.1/cb".into(),
        redirect_uri_given: true,
        challenge: "c".repeat(43),
        scope: "mcp".into(),
        key_id: account(acct),
        key: KeyDigest::of(&format!("pg_{acct:048x}")),
        expires_ms: NOW + 60_000,
    }
}

fn pair(tag: &str, now: i64) -> TokenPair {
    TokenPair {
        access: token_digest(&format!("a-{tag}")),
        access_expires_ms: now + 3_600_000,
        refresh: token_digest(&format!("r-{tag}")),
        refresh_expires_ms: now + 86_400_000,
    }
}

fn grant(family: &str, client: u32, acct: u8, tokens: TokenPair) -> Grant {
    Grant {
        family: family.into(),
        client_id: format!("pgc_{client}"),
        key_id: account(acct),
        key: KeyDigest::of(&format!("pg_{acct:048x}")),
        scope: "mcp".into(),
        resource: "http://127.0.0.1:3402/mcp".into(),
        created_ms: NOW,
        access: tokens.access,
        access_expires_ms: tokens.access_expires_ms,
        refresh: tokens.refresh,
        refresh_expires_ms: tokens.refresh_expires_ms,
    }
}

async fn codes_are_taken_once_and_a_replay_ends_the_grant<S: KeyStore>(s: &S) {
    let limits = GrantLimits::default();
    assert!(s.add_client(client(1, NOW), limits).await.unwrap());
    let code = token_digest("code-1");
    assert!(s
        .add_code(code, code_grant(1, 1), NOW, limits)
        .await
        .unwrap());
    let CodeTaken::Fresh(got) = s.take_code(&code, "pgc_1", NOW).await.unwrap() else {
        panic!("the code is there");
    };
    assert_eq!(got, code_grant(1, 1));
    let tokens = pair("1", NOW);
    let g = grant("f1", 1, 1, tokens);
    assert!(s
        .add_grant(code, got.expires_ms, g.clone(), NOW, limits)
        .await
        .unwrap());
    assert_eq!(s.access_grant(&tokens.access, NOW).await.unwrap(), Some(g));
    // The code again: refused, and the grant it made ends.
    assert_eq!(
        s.take_code(&code, "pgc_1", NOW).await.unwrap(),
        CodeTaken::Reused
    );
    assert_eq!(s.access_grant(&tokens.access, NOW).await.unwrap(), None);
    assert_eq!(
        s.take_code(&code, "pgc_1", NOW).await.unwrap(),
        CodeTaken::Unknown
    );
    // An expired code is unknown.
    let late = token_digest("code-2");
    assert!(s
        .add_code(late, code_grant(1, 1), NOW, limits)
        .await
        .unwrap());
    assert_eq!(
        s.take_code(&late, "pgc_1", NOW + 60_000).await.unwrap(),
        CodeTaken::Unknown
    );
    // No grant for a revoked or unknown client.
    assert!(s.revoke_client("pgc_1").await.unwrap());
    let g = grant("f2", 1, 1, pair("2", NOW));
    assert!(!s
        .add_grant(token_digest("c3"), NOW + 1, g, NOW, limits)
        .await
        .unwrap());
    let g = grant("f3", 9, 1, pair("3", NOW));
    assert!(!s
        .add_grant(token_digest("c4"), NOW + 1, g, NOW, limits)
        .await
        .unwrap());
    assert_eq!(
        s.access_grant(&pair("3", NOW).access, NOW).await.unwrap(),
        None
    );
}

async fn refresh_tokens_are_spent_once<S: KeyStore>(s: &S) {
    let limits = GrantLimits::default();
    s.add_client(client(1, NOW), limits).await.unwrap();
    s.add_client(client(2, NOW), limits).await.unwrap();
    let first = pair("1", NOW);
    let g = grant("f1", 1, 1, first);
    s.add_grant(token_digest("c"), NOW + 60_000, g, NOW, limits)
        .await
        .unwrap();
    // Another client's refresh, an access token as refresh, an expired one: nothing changes.
    let second = pair("2", NOW);
    assert_eq!(
        s.refresh_grant(&first.refresh, "pgc_2", second, NOW, limits)
            .await
            .unwrap(),
        Refreshed::OtherClient
    );
    assert_eq!(
        s.refresh_grant(&first.access, "pgc_1", second, NOW, limits)
            .await
            .unwrap(),
        Refreshed::Unknown
    );
    assert_eq!(
        s.refresh_grant(&first.refresh, "pgc_1", second, NOW + 86_400_000, limits)
            .await
            .unwrap(),
        Refreshed::Expired
    );
    assert!(s.access_grant(&first.access, NOW).await.unwrap().is_some());
    // Rotation: the old pair stops, the new one works.
    let Refreshed::Rotated(g) = s
        .refresh_grant(&first.refresh, "pgc_1", second, NOW, limits)
        .await
        .unwrap()
    else {
        panic!("rotates");
    };
    assert_eq!(
        (g.access, g.refresh, g.key_id),
        (second.access, second.refresh, account(1))
    );
    assert_eq!(s.access_grant(&first.access, NOW).await.unwrap(), None);
    assert!(s.access_grant(&second.access, NOW).await.unwrap().is_some());
    // An access token past its expiry is refused, the grant lives on.
    assert_eq!(
        s.access_grant(&second.access, NOW + 3_600_000)
            .await
            .unwrap(),
        None
    );
    // The spent token again: the family ends.
    assert_eq!(
        s.refresh_grant(&first.refresh, "pgc_1", pair("3", NOW), NOW, limits)
            .await
            .unwrap(),
        Refreshed::Reused
    );
    assert_eq!(s.access_grant(&second.access, NOW).await.unwrap(), None);
    assert_eq!(
        s.refresh_grant(&second.refresh, "pgc_1", pair("4", NOW), NOW, limits)
            .await
            .unwrap(),
        Refreshed::Unknown
    );
}

async fn revocation_reaches_what_it_should<S: KeyStore>(s: &S) {
    let limits = GrantLimits::default();
    s.add_client(client(1, NOW), limits).await.unwrap();
    s.add_client(client(2, NOW), limits).await.unwrap();
    let add = |family: &'static str, c: u32, acct: u8| {
        let tokens = pair(family, NOW);
        let g = grant(family, c, acct, tokens);
        async move {
            s.add_grant(token_digest(family), NOW + 60_000, g, NOW, limits)
                .await
                .unwrap();
            tokens
        }
    };
    let (a, b, c) = (
        add("a", 1, 1).await,
        add("b", 2, 1).await,
        add("c", 1, 2).await,
    );
    // Another client's token: refused, nothing ends.
    assert!(!s.revoke_token(&a.refresh, "pgc_2").await.unwrap());
    assert!(s.access_grant(&a.access, NOW).await.unwrap().is_some());
    // An access token ends alone; a refresh token ends its grant.
    assert!(s.revoke_token(&a.access, "pgc_1").await.unwrap());
    assert_eq!(s.access_grant(&a.access, NOW).await.unwrap(), None);
    let next = pair("a2", NOW);
    assert!(matches!(
        s.refresh_grant(&a.refresh, "pgc_1", next, NOW, limits)
            .await
            .unwrap(),
        Refreshed::Rotated(_)
    ));
    assert!(s.revoke_token(&next.refresh, "pgc_1").await.unwrap());
    assert_eq!(s.access_grant(&next.access, NOW).await.unwrap(), None);
    assert!(s
        .revoke_token(&token_digest("unknown"), "pgc_1")
        .await
        .unwrap());
    // An account's grants end together, others stay.
    s.revoke_account(&account(1)).await.unwrap();
    assert_eq!(s.access_grant(&b.access, NOW).await.unwrap(), None);
    assert!(s.access_grant(&c.access, NOW).await.unwrap().is_some());
    // A client's grants end with it, and it stays listed as revoked.
    assert!(s.revoke_client("pgc_1").await.unwrap());
    assert_eq!(s.access_grant(&c.access, NOW).await.unwrap(), None);
    assert!(s.client("pgc_1").await.unwrap().unwrap().revoked);
    assert!(!s.revoke_client("pgc_9").await.unwrap());
}

async fn bounds_hold<S: KeyStore>(s: &S) {
    let limits = GrantLimits {
        clients: 5,
        codes: 4,
        codes_per_account: 3,
        grants_per_account: 2,
        spent_per_grant: 2,
    };
    // The client with a grant is never the one evicted; the oldest unused one is.
    for n in 0..5 {
        assert!(s
            .add_client(client(n, NOW + i64::from(n)), limits)
            .await
            .unwrap());
    }
    let g = grant("f0", 0, 1, pair("0", NOW));
    s.add_grant(token_digest("c0"), NOW + 1, g, NOW, limits)
        .await
        .unwrap();
    assert!(s.add_client(client(5, NOW + 5), limits).await.unwrap());
    let ids: Vec<String> = s
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["pgc_0", "pgc_2", "pgc_3", "pgc_4", "pgc_5"]);
    // Codes: at most three per account and four in all; expired ones make room.
    for n in 0..3 {
        let code = token_digest(&format!("k{n}"));
        assert!(s
            .add_code(code, code_grant(0, 1), NOW, limits)
            .await
            .unwrap());
    }
    assert!(!s
        .add_code(token_digest("k3"), code_grant(0, 1), NOW, limits)
        .await
        .unwrap());
    assert!(s
        .add_code(token_digest("k4"), code_grant(0, 2), NOW, limits)
        .await
        .unwrap());
    assert!(!s
        .add_code(token_digest("k5"), code_grant(0, 3), NOW, limits)
        .await
        .unwrap());
    assert!(s
        .add_code(token_digest("k6"), code_grant(0, 1), NOW + 60_000, limits)
        .await
        .unwrap());
    // Grants per account: a third ends the oldest.
    let second = pair("g2", NOW);
    let third = pair("g3", NOW + 1);
    s.add_grant(
        token_digest("c1"),
        NOW + 1,
        grant("f1", 0, 1, second),
        NOW,
        limits,
    )
    .await
    .unwrap();
    let mut g3 = grant("f2", 0, 1, third);
    g3.created_ms = NOW + 1;
    s.add_grant(token_digest("c2"), NOW + 1, g3, NOW + 1, limits)
        .await
        .unwrap();
    assert_eq!(
        s.access_grant(&pair("0", NOW).access, NOW).await.unwrap(),
        None
    );
    assert!(s.access_grant(&second.access, NOW).await.unwrap().is_some());
    assert!(s.access_grant(&third.access, NOW).await.unwrap().is_some());
    // Spent tokens: only the last two are remembered; an older one is merely unknown.
    let mut current = third;
    let mut spent = Vec::new();
    for n in 0..4 {
        let next = pair(&format!("s{n}"), NOW);
        assert!(matches!(
            s.refresh_grant(&current.refresh, "pgc_0", next, NOW, limits)
                .await
                .unwrap(),
            Refreshed::Rotated(_)
        ));
        spent.push(current.refresh);
        current = next;
    }
    assert_eq!(
        s.refresh_grant(&spent[0], "pgc_0", pair("x", NOW), NOW, limits)
            .await
            .unwrap(),
        Refreshed::Unknown
    );
    assert!(s
        .access_grant(&current.access, NOW)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.refresh_grant(&spent[3], "pgc_0", pair("y", NOW), NOW, limits)
            .await
            .unwrap(),
        Refreshed::Reused
    );
    assert_eq!(s.access_grant(&current.access, NOW).await.unwrap(), None);
}

async fn another_client_cannot_burn_a_code_or_a_grant<S: KeyStore>(s: &S) {
    let limits = GrantLimits::default();
    s.add_client(client(1, NOW), limits).await.unwrap();
    s.add_client(client(2, NOW), limits).await.unwrap();
    let code = token_digest("code-1");
    s.add_code(code, code_grant(1, 1), NOW, limits)
        .await
        .unwrap();
    // A stolen code presented by another client: refused, and still its owner's.
    assert_eq!(
        s.take_code(&code, "pgc_2", NOW).await.unwrap(),
        CodeTaken::OtherClient
    );
    assert!(matches!(
        s.take_code(&code, "pgc_1", NOW).await.unwrap(),
        CodeTaken::Fresh(_)
    ));
    let first = pair("1", NOW);
    s.add_grant(code, NOW + 60_000, grant("f1", 1, 1, first), NOW, limits)
        .await
        .unwrap();
    // Replayed by another client: the grant it made lives on.
    assert_eq!(
        s.take_code(&code, "pgc_2", NOW).await.unwrap(),
        CodeTaken::OtherClient
    );
    assert!(s.access_grant(&first.access, NOW).await.unwrap().is_some());
    // A spent refresh token presented by another client ends nothing either.
    let second = pair("2", NOW);
    assert!(matches!(
        s.refresh_grant(&first.refresh, "pgc_1", second, NOW, limits)
            .await
            .unwrap(),
        Refreshed::Rotated(_)
    ));
    assert_eq!(
        s.refresh_grant(&first.refresh, "pgc_2", pair("3", NOW), NOW, limits)
            .await
            .unwrap(),
        Refreshed::OtherClient
    );
    assert!(s.access_grant(&second.access, NOW).await.unwrap().is_some());
}

async fn clients_left_without_grants_make_room<S: KeyStore>(s: &S) {
    let limits = GrantLimits {
        clients: 2,
        ..GrantLimits::default()
    };
    for n in 0..2 {
        s.add_client(client(n, NOW + i64::from(n)), limits)
            .await
            .unwrap();
        let family = format!("f{n}");
        let g = grant(&family, n, n as u8 + 1, pair(&family, NOW));
        let code = token_digest(&family);
        assert!(s.add_grant(code, NOW + 1, g, NOW, limits).await.unwrap());
    }
    // Both clients hold grants: no room.
    assert!(!s.add_client(client(2, NOW + 2), limits).await.unwrap());
    // Client 1's only grant ends with its account: it may be evicted now.
    s.revoke_account(&account(2)).await.unwrap();
    assert!(s.add_client(client(2, NOW + 2), limits).await.unwrap());
    // A revoked client holds nothing either, and is the oldest.
    assert!(s.revoke_client("pgc_0").await.unwrap());
    assert!(s.add_client(client(3, NOW + 3), limits).await.unwrap());
    let ids: Vec<String> = s
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["pgc_2", "pgc_3"]);
}

macro_rules! grant_suite {
    ($name:ident, $make:expr, $run:path) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn codes_are_taken_once_and_a_replay_ends_the_grant() {
                $run(async {
                    super::codes_are_taken_once_and_a_replay_ends_the_grant(&$make).await
                });
            }
            #[test]
            fn refresh_tokens_are_spent_once() {
                $run(async { super::refresh_tokens_are_spent_once(&$make).await });
            }
            #[test]
            fn revocation_reaches_what_it_should() {
                $run(async { super::revocation_reaches_what_it_should(&$make).await });
            }
            #[test]
            fn another_client_cannot_burn_a_code_or_a_grant() {
                $run(async { super::another_client_cannot_burn_a_code_or_a_grant(&$make).await });
            }
            #[test]
            fn clients_left_without_grants_make_room() {
                $run(async { super::clients_left_without_grants_make_room(&$make).await });
            }
            #[test]
            fn bounds_hold() {
                $run(async { super::bounds_hold(&$make).await });
            }
        }
    };
}

grant_suite!(
    memory,
    paygate_mcp::MemoryKeyStore::new(),
    paygate_mcp::block_on
);

#[cfg(feature = "redis")]
use common::redis_server::suite as redis_backend;

#[cfg(feature = "redis")]
grant_suite!(redis, redis_backend::store().await, redis_backend::run);
