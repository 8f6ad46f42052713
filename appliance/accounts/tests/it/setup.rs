//! The one-time setup token: a new one per start while no administrator exists, used up
//! only by the call that creates the first administrator, void once any exists.

use accounts::{AccountError, Role};

use super::*;

#[tokio::test]
async fn the_setup_token_creates_the_first_administrator_once() {
    let f = Fixture::new();
    let a = &f.accounts;
    let token = a.setup_token().expect("no administrator, so a setup token");
    assert_eq!(token.len(), 64);
    assert!(matches!(
        a.setup_admin("not the token", "boss", PASSWORD, addr(1))
            .await,
        Err(AccountError::SetupTokenInvalid)
    ));
    // A refused form (its name or password) leaves the token valid.
    assert!(matches!(
        a.setup_admin(&token, "boss", "short", addr(1)).await,
        Err(AccountError::PasswordTooShort { .. })
    ));
    assert!(matches!(
        a.setup_admin(&token, "-boss", PASSWORD, addr(1)).await,
        Err(AccountError::InvalidUserName { .. })
    ));
    assert_eq!(a.setup_token().as_deref(), Some(token.as_str()));

    let (user, event) = a
        .setup_admin(&token, "boss", PASSWORD, addr(1))
        .await
        .unwrap();
    assert_eq!(user.role, Role::Admin);
    assert_eq!(
        event.detail.as_deref(),
        Some("added the first administrator boss with the setup link")
    );
    assert_eq!(event.peer.as_deref(), Some("10.0.0.1"));
    assert_eq!(a.setup_token(), None);
    assert!(matches!(
        a.setup_admin(&token, "second", PASSWORD, addr(1)).await,
        Err(AccountError::SetupDone)
    ));
    assert!(a.login("boss", PASSWORD, addr(1)).await.result.is_ok());
    assert_eq!(a.users().len(), 1);
    // And after a restart there is none.
    let f = f.reopen();
    assert_eq!(f.accounts.setup_token(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_setup_forms_sent_at_once_make_one_administrator() {
    let f = Fixture::new();
    let token = f.accounts.setup_token().unwrap();
    let tries: Vec<_> = ["one", "two", "three"]
        .into_iter()
        .map(|name| {
            let (a, token) = (f.accounts.clone(), token.clone());
            tokio::spawn(async move { a.setup_admin(&token, name, PASSWORD, addr(1)).await })
        })
        .collect();
    let mut made = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(AccountError::SetupDone) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(made, 1);
    assert_eq!(f.accounts.users().len(), 1);
}

#[tokio::test]
async fn each_start_without_an_administrator_makes_a_new_token() {
    let f = Fixture::new();
    let first = f.accounts.setup_token().unwrap();
    // A technician is not an administrator: the link stays.
    f.add("tech", Role::Technician).await;
    assert_eq!(f.accounts.setup_token().as_deref(), Some(first.as_str()));
    let f = f.reopen();
    let second = f.accounts.setup_token().unwrap();
    assert_ne!(first, second);
    assert!(matches!(
        f.accounts
            .setup_admin(&first, "boss", PASSWORD, addr(1))
            .await,
        Err(AccountError::SetupTokenInvalid)
    ));
}

#[tokio::test]
async fn an_administrator_made_another_way_voids_the_token() {
    let f = Fixture::new();
    let token = f.accounts.setup_token().unwrap();
    // As `outpost user add NAME --role admin` does.
    f.add("boss", Role::Admin).await;
    assert_eq!(f.accounts.setup_token(), None);
    assert!(matches!(
        f.accounts
            .setup_admin(&token, "intruder", PASSWORD, addr(1))
            .await,
        Err(AccountError::SetupDone)
    ));
    assert!(f.accounts.user("intruder").is_err());
}
