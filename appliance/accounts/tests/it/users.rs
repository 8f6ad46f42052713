//! Users, roles and the password rule.

use accounts::{AccountError, Role, Scope, check_password};

use super::*;

#[test]
fn a_password_needs_twelve_characters_counted_as_characters_not_bytes() {
    // Eleven "ü" are 22 bytes: still too short.
    match check_password(&"ü".repeat(11)) {
        Err(AccountError::PasswordTooShort { chars: 11, min: 12 }) => {}
        other => panic!("{other:?}"),
    }
    check_password(&"ü".repeat(12)).unwrap();
    // Nothing else is asked of it: no classes of characters, spaces are fine.
    check_password("aaaaaaaaaaaa").unwrap();
    check_password("            ").unwrap();
    assert!(check_password("").is_err());
}

#[tokio::test]
async fn a_user_with_a_short_password_is_not_added() {
    let f = Fixture::new();
    let e = f
        .accounts
        .add_user("tech", Role::Technician, "short", &root())
        .await
        .unwrap_err();
    assert!(
        matches!(e, AccountError::PasswordTooShort { chars: 5, min: 12 }),
        "{e}"
    );
    assert!(e.to_string().contains("at least 12"), "{e}");
    assert!(f.accounts.users().is_empty());
}

#[tokio::test]
async fn there_is_no_user_until_one_is_added() {
    let f = Fixture::new();
    assert!(f.accounts.users().is_empty());
    for name in ["admin", "root", "outpost", "technician"] {
        let attempt = f.accounts.login(name, name, addr(1)).await;
        assert!(matches!(
            attempt.result,
            Err(AccountError::BadCredentials { .. })
        ));
    }
}

#[tokio::test]
async fn a_password_is_stored_only_as_an_argon2id_hash_and_verifies() {
    let f = Fixture::new();
    let (user, event) = f
        .accounts
        .add_user("tech", Role::Technician, PASSWORD, &root())
        .await
        .unwrap();
    assert_eq!(user.role, Role::Technician);
    assert!(!user.disabled);
    assert_eq!(event.event, audit::EventKind::AccountChanged);
    assert_eq!(event.actor.as_ref().unwrap().name, "root");
    assert_eq!(
        event.detail.as_deref(),
        Some("added user tech (technician)")
    );

    assert!(
        f.accounts
            .login("tech", PASSWORD, addr(1))
            .await
            .result
            .is_ok()
    );
    let wrong = f
        .accounts
        .login("tech", "correct horse battery!", addr(1))
        .await;
    assert!(matches!(
        wrong.result,
        Err(AccountError::BadCredentials { .. })
    ));

    let path = f.accounts.path();
    drop(f.accounts);
    let bytes = std::fs::read(path).unwrap();
    assert!(
        !contains(&bytes, PASSWORD.as_bytes()),
        "the password is in the file"
    );
    assert!(contains(&bytes, b"$argon2id$v=19$m=19456,t=2,p=1$"));
}

#[test]
fn each_role_includes_the_ones_below_it() {
    use Role::*;
    let allowed = |r: Role| {
        Role::ALL
            .into_iter()
            .filter(|q| r.allows(*q))
            .collect::<Vec<_>>()
    };
    assert_eq!(allowed(Admin), [Viewer, Technician, Admin]);
    assert_eq!(allowed(Technician), [Viewer, Technician]);
    assert_eq!(allowed(Viewer), [Viewer]);
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
    }
    assert!(matches!(
        "root".parse::<Role>(),
        Err(AccountError::UnknownRole(_))
    ));
    assert_eq!("read".parse::<Scope>().unwrap(), Scope::Read);
    assert_eq!("read,store".parse::<Scope>().unwrap(), Scope::ReadStore);
    assert_eq!("store, read".parse::<Scope>().unwrap(), Scope::ReadStore);
    assert!(matches!(
        "store".parse::<Scope>(),
        Err(AccountError::UnknownScope(_))
    ));
}

#[tokio::test]
async fn user_names_that_a_shell_or_a_spreadsheet_would_misread_are_refused() {
    let f = Fixture::new();
    for name in ["", "-rf", "=cmd", "a b", "ä", "tab\t", &"x".repeat(65)] {
        let e = f
            .accounts
            .add_user(name, Role::Viewer, PASSWORD, &root())
            .await
            .unwrap_err();
        assert!(
            matches!(e, AccountError::InvalidUserName { .. }),
            "{name:?}: {e}"
        );
    }
    f.add("j.doe@clinic-1_x", Role::Viewer).await;
    let e = f
        .accounts
        .add_user("j.doe@clinic-1_x", Role::Viewer, PASSWORD, &root())
        .await
        .unwrap_err();
    assert!(matches!(e, AccountError::UserExists(_)), "{e}");
}

#[tokio::test]
async fn the_last_enabled_administrator_cannot_be_removed_disabled_or_demoted() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    let a = &f.accounts;
    let last = |e: AccountError| assert!(matches!(e, AccountError::LastAdministrator(_)), "{e}");
    last(a.remove_user("boss", &root()).await.unwrap_err());
    last(a.set_disabled("boss", true, &root()).await.unwrap_err());
    last(
        a.set_role("boss", Role::Technician, &root())
            .await
            .unwrap_err(),
    );
    // With a second administrator, the first may go.
    f.add("deputy", Role::Admin).await;
    a.set_role("boss", Role::Viewer, &root()).await.unwrap();
    assert_eq!(a.user("boss").unwrap().role, Role::Viewer);
    last(a.set_disabled("deputy", true, &root()).await.unwrap_err());
    a.remove_user("boss", &root()).await.unwrap();
    assert!(matches!(a.user("boss"), Err(AccountError::UnknownUser(_))));
    assert!(matches!(
        a.remove_user("boss", &root()).await,
        Err(AccountError::UnknownUser(_))
    ));
}

#[tokio::test]
async fn account_changes_return_their_audit_events() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    let boss = Actor::user("boss", Role::Admin, addr(9));
    let a = &f.accounts;
    let events = [
        a.set_password("tech", "another long password", &boss)
            .await
            .unwrap(),
        a.set_role("tech", Role::Viewer, &boss).await.unwrap(),
        a.set_disabled("tech", true, &boss).await.unwrap(),
        a.set_disabled("tech", false, &boss).await.unwrap(),
        a.unlock("tech", &boss).unwrap(),
        a.remove_user("tech", &boss).await.unwrap(),
    ];
    let details: Vec<&str> = events
        .iter()
        .map(|e| e.detail.as_deref().unwrap())
        .collect();
    assert_eq!(
        details[..4],
        [
            "changed the password of tech",
            "changed the role of tech from technician to viewer",
            "disabled user tech",
            "enabled user tech",
        ]
    );
    assert!(
        details[4].starts_with("unlocked user tech"),
        "{}",
        details[4]
    );
    assert_eq!(details[5], "removed user tech (viewer) with 0 API token(s)");
    for e in &events {
        assert_eq!(e.event, audit::EventKind::AccountChanged);
        let actor = e.actor.as_ref().unwrap();
        assert_eq!(
            (actor.name.as_str(), actor.role.as_deref()),
            ("boss", Some("admin"))
        );
        assert_eq!(e.peer.as_deref(), Some("10.0.0.9"));
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
