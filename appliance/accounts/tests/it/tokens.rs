//! API tokens: shown once, stored as their SHA-256, scoped, listable and revocable.

use accounts::{AccountError, Role, Scope};
use sha2::{Digest, Sha256};

use super::users::contains;
use super::*;

#[tokio::test]
async fn a_token_verifies_by_its_hash_only_and_is_listed_without_its_secret() {
    let f = Fixture::new();
    f.add("pacs", Role::Technician).await;
    let (token, event) = f
        .accounts
        .create_token("pacs", Scope::ReadStore, &root())
        .await
        .unwrap();
    assert_eq!(
        event.detail.as_deref(),
        Some("made API token 1 (read,store) for pacs")
    );
    assert!(token.secret.len() >= 64, "{}", token.secret);
    assert!(!format!("{token:?}").contains(&token.secret));
    let auth = f.accounts.verify_token(&token.secret).unwrap();
    assert_eq!(
        (auth.id, auth.user.as_str(), auth.role, auth.scope),
        (1, "pacs", Role::Technician, Scope::ReadStore)
    );
    assert!(auth.scope.may_store());
    assert_eq!(f.accounts.tokens(None), std::slice::from_ref(&token.info));
    assert_eq!(
        f.accounts.tokens(Some("pacs")),
        std::slice::from_ref(&token.info)
    );
    assert!(f.accounts.tokens(Some("other")).is_empty());
    // Near misses are refused.
    let mut wrong = token.secret.clone();
    wrong.pop();
    for w in [wrong.as_str(), "", &token.secret.to_uppercase()] {
        assert!(matches!(
            f.accounts.verify_token(w),
            Err(AccountError::UnknownToken)
        ));
    }

    let path = f.accounts.path();
    let f = f.reopen();
    f.accounts.verify_token(&token.secret).unwrap();
    drop(f.accounts);
    let bytes = std::fs::read(path).unwrap();
    assert!(
        !contains(&bytes, token.secret.as_bytes()),
        "the secret is in the file"
    );
    let hash: [u8; 32] = Sha256::digest(token.secret.as_bytes()).into();
    assert!(
        contains(&bytes, &hash),
        "the file does not hold the token's hash"
    );
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_numbers_are_never_reused() {
    let f = Fixture::new();
    f.add("pacs", Role::Viewer).await;
    let a = &f.accounts;
    let (one, _) = a.create_token("pacs", Scope::Read, &root()).await.unwrap();
    let (two, _) = a.create_token("pacs", Scope::Read, &root()).await.unwrap();
    assert_ne!(one.secret, two.secret);
    let event = a.revoke_token(one.info.id, &root()).await.unwrap();
    assert_eq!(
        event.detail.as_deref(),
        Some("revoked API token 1 (read) of pacs")
    );
    assert!(matches!(
        a.verify_token(&one.secret),
        Err(AccountError::UnknownToken)
    ));
    a.verify_token(&two.secret).unwrap();
    assert!(matches!(
        a.revoke_token(one.info.id, &root()).await,
        Err(AccountError::UnknownTokenId(1))
    ));
    let f = f.reopen();
    assert_eq!(f.accounts.tokens(None), std::slice::from_ref(&two.info));
    let (three, _) = f
        .accounts
        .create_token("pacs", Scope::Read, &root())
        .await
        .unwrap();
    assert_eq!(three.info.id, 3);
}

#[tokio::test]
async fn a_token_reads_or_stores_and_never_does_more_than_its_user_may() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    f.add("reader", Role::Viewer).await;
    let a = &f.accounts;
    let (store, _) = a
        .create_token("tech", Scope::ReadStore, &root())
        .await
        .unwrap();
    let (read, _) = a.create_token("boss", Scope::Read, &root()).await.unwrap();
    let storing = a.verify_token(&store.secret).unwrap();
    let reading = a.verify_token(&read.secret).unwrap();
    assert!(storing.may_store() && !reading.may_store());
    for t in [&storing, &reading] {
        // A token reads; it does not act as its technician or administrator.
        assert!(t.allows(Role::Viewer));
        assert!(!t.allows(Role::Technician) && !t.allows(Role::Admin));
    }
    // A viewer is read-only, so is not given a token that stores.
    let e = a
        .create_token("reader", Scope::ReadStore, &root())
        .await
        .unwrap_err();
    assert!(matches!(e, AccountError::ScopeAboveRole { .. }), "{e}");
    assert!(a.tokens(Some("reader")).is_empty());
    // And a storing token of a user made a viewer since stores no more.
    a.set_role("tech", Role::Viewer, &root()).await.unwrap();
    let demoted = a.verify_token(&store.secret).unwrap();
    assert_eq!(demoted.scope, Scope::ReadStore);
    assert!(!demoted.may_store());
}

#[tokio::test]
async fn a_token_stands_for_its_user_as_they_are_now() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("pacs", Role::Technician).await;
    let a = &f.accounts;
    let (t, _) = a.create_token("pacs", Scope::Read, &root()).await.unwrap();
    a.set_role("pacs", Role::Viewer, &root()).await.unwrap();
    assert_eq!(a.verify_token(&t.secret).unwrap().role, Role::Viewer);
    a.set_disabled("pacs", true, &root()).await.unwrap();
    assert!(matches!(
        a.verify_token(&t.secret),
        Err(AccountError::Disabled(_))
    ));
    a.set_disabled("pacs", false, &root()).await.unwrap();
    a.verify_token(&t.secret).unwrap();
    // Removing the user removes the token; a user made again under the name does not get it.
    let event = a.remove_user("pacs", &root()).await.unwrap();
    assert_eq!(
        event.detail.as_deref(),
        Some("removed user pacs (viewer) with 1 API token(s)")
    );
    f.add("pacs", Role::Admin).await;
    assert!(matches!(
        a.verify_token(&t.secret),
        Err(AccountError::UnknownToken)
    ));
    assert!(a.tokens(None).is_empty());
    assert!(matches!(
        a.create_token("nobody", Scope::Read, &root()).await,
        Err(AccountError::UnknownUser(_))
    ));
}
