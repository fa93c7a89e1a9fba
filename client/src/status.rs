//! The verifier's copies of the authority's status lists (draft-ietf-oauth-status-list),
//! as WatchKeys pushes them: every list after the first key set, then each list again when
//! it changes or is re-signed. Each list token is verified before it is kept: signed by a
//! key of the key set, `typ` `statuslist+jwt`, from the authority's issuer, not expired,
//! its `sub` the list's URI, and its `lst` inflating to at most `MAX_INFLATED` bytes. A token
//! whose `status` names a list the verifier holds no valid copy of is refused
//! (`StatusUnavailable`), never taken as valid.

use std::{collections::HashMap, sync::Arc};

use token_authority_jose::{
    jwt::{
        verify::{self, Expectations, KeyLookup, Policy, Reason, Rejection},
        TokenType,
    },
    status_list::{judge, StatusList, StatusReference},
};

use crate::pb;

/// The most a list's `lst` may inflate to: 16 MiB, 67,108,864 two-bit statuses. A list
/// token that inflates past it is refused (a few kilobytes can inflate to gigabytes).
pub const MAX_INFLATED: usize = token_authority_jose::status_list::DEFAULT_MAX_INFLATED;
/// How a refusal for a list not held starts (the URI follows): the verifier then asks for
/// the list over HTTP, when it has a JWKS URL.
pub(crate) const NO_COPY: &str = "no copy is held of status list ";
/// The longest list token accepted.
const MAX_LIST_TOKEN_BYTES: usize = 8 * 1024 * 1024;

/// A verified copy of one list.
#[derive(Debug)]
struct Held {
    list: StatusList,
    /// Its token's `exp`: past it (and the leeway) the copy is not used.
    exp: u64,
    /// Its token's `iat`: a token of the same list issued earlier does not replace it.
    iat: u64,
    /// The ETag it was fetched with over HTTP, for the next conditional fetch.
    etag: Option<String>,
}

/// Every list held, by URI.
#[derive(Debug, Default)]
pub(crate) struct HeldLists {
    by_uri: HashMap<String, Arc<Held>>,
}

/// Why a pushed list was not kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListRefused {
    #[error("list {uri}: {rejection}")]
    Token { uri: String, rejection: Rejection },
    #[error("list {uri}: its sub is {sub:?}, not its URI")]
    Subject { uri: String, sub: String },
    #[error("list {uri}: {reason}")]
    List { uri: String, reason: String },
    /// A stale copy (from a cache, or replayed): it would undo changes the copy held shows.
    #[error("list {uri}: issued at {iat}, before the copy held (issued at {held})")]
    Older { uri: String, iat: u64, held: u64 },
}

impl HeldLists {
    /// These lists with `watched` applied: each pushed list verified against `keys` and
    /// kept (a refused one leaves the copy held before, if any), lists no longer served
    /// dropped. Returns the lists refused.
    pub(crate) fn apply<K: KeyLookup + ?Sized>(
        &self,
        watched: &pb::WatchedStatusLists,
        keys: &K,
        policy: &Policy,
        now: u64,
    ) -> (HeldLists, Vec<ListRefused>) {
        let mut by_uri = self.by_uri.clone();
        let mut refused = Vec::new();
        for pushed in &watched.lists {
            let read = read_list(&pushed.token, &pushed.uri, keys, policy, now)
                .and_then(|held| not_older(&by_uri, &pushed.uri, held));
            match read {
                Ok(held) => {
                    by_uri.insert(pushed.uri.clone(), Arc::new(held));
                }
                Err(why) => refused.push(why),
            }
        }
        // Served lists end their URI in their id; a list not named is gone.
        by_uri.retain(|uri, _| {
            watched.lists.iter().any(|list| &list.uri == uri)
                || watched.list_ids.iter().any(|id| {
                    uri.rsplit_once('/')
                        .is_some_and(|(_, last)| last == id.to_string())
                })
        });
        (HeldLists { by_uri }, refused)
    }

    /// What `claims`' status says, from the copies held (nothing to check without a
    /// `status` claim).
    pub(crate) fn check(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        leeway: u64,
        now: u64,
    ) -> Result<(), Rejection> {
        let unavailable = |detail: String| Rejection {
            reason: Reason::StatusUnavailable,
            detail,
        };
        let reference = match StatusReference::from_claims(claims) {
            Ok(Some(reference)) => reference,
            Ok(None) => return Ok(()),
            Err(e) => return Err(unavailable(e.to_string())),
        };
        let held = self
            .by_uri
            .get(&reference.uri)
            .ok_or_else(|| unavailable(format!("{NO_COPY}{}", reference.uri)))?;
        if now > held.exp.saturating_add(leeway) {
            return Err(unavailable(format!(
                "the copy of status list {} expired",
                reference.uri
            )));
        }
        judge(&held.list, reference.idx, &reference.uri)
    }

    /// How many lists are held.
    pub(crate) fn len(&self) -> usize {
        self.by_uri.len()
    }

    /// The URIs held, with the ETag each was fetched with over HTTP.
    pub(crate) fn held(&self) -> Vec<(String, Option<String>)> {
        self.by_uri
            .iter()
            .map(|(uri, held)| (uri.clone(), held.etag.clone()))
            .collect()
    }

    /// These lists with `token`, fetched over HTTP for `uri`, verified and kept.
    pub(crate) fn with_fetched<K: KeyLookup + ?Sized>(
        &self,
        uri: &str,
        token: &str,
        etag: Option<String>,
        keys: &K,
        policy: &Policy,
        now: u64,
    ) -> Result<HeldLists, ListRefused> {
        let mut held = not_older(&self.by_uri, uri, read_list(token, uri, keys, policy, now)?)?;
        held.etag = etag;
        let mut by_uri = self.by_uri.clone();
        by_uri.insert(uri.to_owned(), Arc::new(held));
        Ok(HeldLists { by_uri })
    }
}

/// `held`, unless the copy of `uri` already held was issued later.
fn not_older(
    by_uri: &HashMap<String, Arc<Held>>,
    uri: &str,
    held: Held,
) -> Result<Held, ListRefused> {
    match by_uri.get(uri) {
        Some(kept) if kept.iat > held.iat => Err(ListRefused::Older {
            uri: uri.to_owned(),
            iat: held.iat,
            held: kept.iat,
        }),
        _ => Ok(held),
    }
}

/// A list token verified as the draft asks, and its list.
fn read_list<K: KeyLookup + ?Sized>(
    token: &str,
    uri: &str,
    keys: &K,
    policy: &Policy,
    now: u64,
) -> Result<Held, ListRefused> {
    let policy = Policy {
        max_token_bytes: MAX_LIST_TOKEN_BYTES,
        ..policy.clone()
    };
    let expect = Expectations {
        token_type: TokenType::StatusList,
        ..Expectations::default()
    };
    let verified =
        verify::verify_with(token, keys, &policy, &expect, now).map_err(|rejection| {
            ListRefused::Token {
                uri: uri.to_owned(),
                rejection,
            }
        })?;
    if verified.subject != uri {
        return Err(ListRefused::Subject {
            uri: uri.to_owned(),
            sub: verified.subject,
        });
    }
    let list = verified
        .claims
        .get("status_list")
        .ok_or_else(|| ListRefused::List {
            uri: uri.to_owned(),
            reason: "no status_list claim".into(),
        })
        .and_then(|claim| {
            StatusList::from_claim(claim, MAX_INFLATED).map_err(|e| ListRefused::List {
                uri: uri.to_owned(),
                reason: e.to_string(),
            })
        })?;
    // The draft requires iat; a list token without one cannot be ordered against another.
    let iat = verified
        .claims
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ListRefused::List {
            uri: uri.to_owned(),
            reason: "no iat claim of whole seconds".into(),
        })?;
    Ok(Held {
        list,
        exp: u64::try_from(verified.expires_at).unwrap_or(0),
        iat,
        etag: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use token_authority_jose::{
        crypto::{generate_pkcs8, Algorithm, SigningKey},
        jwk::{render_jwks, PublicJwk},
        jwt::{sign_as, Signer},
        status_list::Status,
    };

    use super::*;
    use crate::keys::KeySet;

    const T0: u64 = 1_700_000_000;
    const ISS: &str = "https://token-authority.test";
    const URI: &str = "https://token-authority.test/statuslists/1";

    fn signer(kid: &str) -> Signer {
        let key = generate_pkcs8(Algorithm::ES256).unwrap();
        Signer::new(
            kid.into(),
            SigningKey::from_pkcs8(Algorithm::ES256, &key).unwrap(),
        )
    }

    fn keys(signer: &Signer) -> KeySet {
        let public = signer.key.verifying_key().unwrap();
        let jwks = render_jwks(&[PublicJwk::new(
            &signer.kid,
            Algorithm::ES256,
            public.components(),
        )]);
        KeySet::from_jwks(&jwks, String::new()).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            issuer: ISS.into(),
            leeway: 60,
            max_token_bytes: 8192,
        }
    }

    /// A list of 64 statuses with index 3 revoked and 5 suspended, as the authority signs
    /// it, with `change` applied to the claims.
    fn list_token(
        signer: &Signer,
        token_type: TokenType,
        change: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        let mut list = StatusList::new(2, 64).unwrap();
        list.set(3, Status::Invalid).unwrap();
        list.set(5, Status::Suspended).unwrap();
        let mut claims = json!({
            "iss": ISS, "sub": URI, "iat": T0, "exp": T0 + 600, "ttl": 60,
            "status_list": list.to_claim(),
        });
        change(&mut claims);
        sign_as(signer, token_type, claims.as_object().unwrap(), 1 << 24).unwrap()
    }

    fn pushed(token: String) -> pb::WatchedStatusLists {
        pb::WatchedStatusLists {
            lists: vec![pb::WatchedStatusList {
                list_id: 1,
                uri: URI.into(),
                token,
            }],
            list_ids: vec![1],
        }
    }

    fn referencing(idx: u64) -> serde_json::Map<String, serde_json::Value> {
        let mut claims = serde_json::Map::new();
        claims.insert(
            "status".into(),
            json!({"status_list": {"idx": idx, "uri": URI}}),
        );
        claims
    }

    #[test]
    fn a_good_list_is_kept_and_read() {
        let authority = signer("k");
        let (held, refused) = HeldLists::default().apply(
            &pushed(list_token(&authority, TokenType::StatusList, |_| {})),
            &keys(&authority),
            &policy(),
            T0,
        );
        assert!(refused.is_empty(), "{refused:?}");
        let reason = |idx| {
            held.check(&referencing(idx), 60, T0)
                .err()
                .map(|r| r.reason)
        };
        assert_eq!(reason(0), None);
        assert_eq!(reason(3), Some(Reason::RevokedToken));
        assert_eq!(reason(5), Some(Reason::SuspendedToken));
        // Past the end of the list: refused, as the draft asks.
        assert_eq!(reason(64), Some(Reason::StatusUnavailable));
        // A token without a status claim has nothing to check.
        assert!(held.check(&serde_json::Map::new(), 60, T0).is_ok());
        // Once the copy has expired (exp plus the leeway), it is not used.
        let late = held.check(&referencing(0), 60, T0 + 661).unwrap_err();
        assert_eq!(late.reason, Reason::StatusUnavailable);
        assert!(late.detail.contains("expired"), "{late:?}");
        // A list no longer served is dropped.
        let (emptied, _) = held.apply(
            &pb::WatchedStatusLists {
                lists: vec![],
                list_ids: vec![2],
            },
            &keys(&authority),
            &policy(),
            T0,
        );
        assert_eq!(emptied.len(), 0);
        let missing = emptied.check(&referencing(0), 60, T0).unwrap_err();
        assert_eq!(missing.detail, format!("{NO_COPY}{URI}"));
    }

    /// Hostile list tokens: each is refused, and the copy held before stays.
    #[test]
    fn hostile_lists_are_refused() {
        let authority = signer("k");
        let forger = signer("k");
        let set = keys(&authority);
        let good = list_token(&authority, TokenType::StatusList, |_| {});
        let (held, _) = HeldLists::default().apply(&pushed(good), &set, &policy(), T0);
        // A bomb: just past the cap of VALID, a few kilobytes compressed.
        let bomb = StatusList::from_bytes(8, vec![0; MAX_INFLATED + 1])
            .unwrap()
            .encode();
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "signed by another key",
                list_token(&forger, TokenType::StatusList, |_| {}),
                "BadSignature",
            ),
            (
                "an access token, not a list token",
                list_token(&authority, TokenType::Access, |_| {}),
                "WrongTokenType",
            ),
            (
                "another list's sub",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["sub"] = json!("https://token-authority.test/statuslists/2")
                }),
                "its sub is",
            ),
            (
                "expired",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["exp"] = json!(T0 - 120)
                }),
                "Expired",
            ),
            (
                "another issuer",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["iss"] = json!("https://elsewhere.test")
                }),
                "IssuerMismatch",
            ),
            (
                "a decompression bomb",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["status_list"] = json!({"bits": 8, "lst": bomb})
                }),
                "inflates past 16777216 bytes",
            ),
            (
                "bits of 3",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["status_list"]["bits"] = json!(3)
                }),
                "bits must be 1, 2, 4 or 8",
            ),
            (
                "no list",
                list_token(&authority, TokenType::StatusList, |c| {
                    c.as_object_mut().unwrap().remove("status_list");
                }),
                "no status_list claim",
            ),
            (
                "no iat",
                list_token(&authority, TokenType::StatusList, |c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                "no iat claim",
            ),
            // A stale copy from a cache, or replayed, with index 3 still valid: it would
            // undo the revocation the copy held shows.
            (
                "issued before the copy held",
                list_token(&authority, TokenType::StatusList, |c| {
                    c["iat"] = json!(T0 - 1);
                    c["status_list"] = StatusList::new(2, 64).unwrap().to_claim();
                }),
                "before the copy held",
            ),
        ];
        for (name, token, expected) in cases {
            let (after, refused) = held.apply(&pushed(token), &set, &policy(), T0);
            assert_eq!(refused.len(), 1, "{name}");
            let shown = format!("{:?} {}", refused[0], refused[0]);
            assert!(shown.contains(expected), "{name}: {shown}");
            // The good copy stays in use.
            assert_eq!(
                after.check(&referencing(3), 60, T0).unwrap_err().reason,
                Reason::RevokedToken,
                "{name}"
            );
        }
    }
}
