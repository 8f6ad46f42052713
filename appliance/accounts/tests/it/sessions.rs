//! Sessions: idle and absolute expiry, CSRF tokens, logout, and the account changes that end
//! them.

use accounts::{AccountError, Accounts, Login, Options, Role, SessionPolicy};
use audit::EventKind;

use super::*;

async fn login(f: &Fixture, name: &str) -> Login {
    f.accounts
        .login(name, PASSWORD, addr(1))
        .await
        .result
        .unwrap()
}

#[tokio::test]
async fn a_session_expires_after_thirty_idle_minutes_and_use_keeps_it_alive() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let s = login(&f, "tech").await;
    for _ in 0..3 {
        f.advance(minutes(29));
        let session = f.accounts.authenticate(&s.session).unwrap();
        assert_eq!(
            (session.user.as_str(), session.role),
            ("tech", Role::Technician)
        );
    }
    f.advance(minutes(30));
    assert!(matches!(
        f.accounts.authenticate(&s.session),
        Err(AccountError::SessionExpired)
    ));
    // An expired session is gone.
    assert!(matches!(
        f.accounts.authenticate(&s.session),
        Err(AccountError::UnknownSession)
    ));
}

#[tokio::test]
async fn a_session_ends_after_twelve_hours_however_busy() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let s = login(&f, "tech").await;
    let absolute = SessionPolicy::default().absolute;
    assert_eq!(absolute, minutes(12 * 60));
    for _ in 0..(12 * 60 / 20 - 1) {
        f.advance(minutes(20));
        f.accounts.authenticate(&s.session).unwrap();
    }
    f.advance(minutes(20));
    assert!(matches!(
        f.accounts.authenticate(&s.session),
        Err(AccountError::SessionExpired)
    ));
}

#[tokio::test]
async fn a_session_has_its_own_csrf_token() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let one = login(&f, "tech").await;
    let two = login(&f, "tech").await;
    assert_ne!(one.session, two.session);
    let session = f.accounts.authenticate(&one.session).unwrap();
    assert_eq!(session.csrf(), one.csrf);
    session.check_csrf(&one.csrf).unwrap();
    for wrong in [two.csrf.as_str(), "", &one.csrf[..63], &one.session] {
        assert!(matches!(
            session.check_csrf(wrong),
            Err(AccountError::CsrfMismatch)
        ));
    }
    // Nothing secret is printed.
    let printed = format!("{session:?} {one:?}");
    assert!(
        !printed.contains(&one.csrf) && !printed.contains(&one.session),
        "{printed}"
    );
}

#[tokio::test]
async fn logout_ends_the_session_and_is_audited() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let s = login(&f, "tech").await;
    let other = login(&f, "tech").await;
    let event = f.accounts.logout(&s.session, addr(1)).unwrap();
    assert_eq!(event.event, EventKind::Logout);
    assert_eq!(event.actor.unwrap().name, "tech");
    assert!(matches!(
        f.accounts.authenticate(&s.session),
        Err(AccountError::UnknownSession)
    ));
    assert!(matches!(
        f.accounts.logout(&s.session, addr(1)),
        Err(AccountError::UnknownSession)
    ));
    f.accounts.authenticate(&other.session).unwrap();
}

#[tokio::test]
async fn a_new_password_disabling_or_removing_a_user_ends_their_sessions() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    let a = &f.accounts;
    let boss = login(&f, "boss").await;

    let s = login(&f, "tech").await;
    login(&f, "tech").await;
    assert_eq!(a.sessions_of("tech"), 2);
    let event = a
        .set_password("tech", "a brand new passphrase", &root())
        .await
        .unwrap();
    assert_eq!(
        event.detail.as_deref(),
        Some("changed the password of tech; ended its 2 sessions")
    );
    assert!(a.authenticate(&s.session).is_err());
    assert_eq!(a.sessions_of("tech"), 0);

    let s = a
        .login("tech", "a brand new passphrase", addr(1))
        .await
        .result
        .unwrap();
    a.set_disabled("tech", true, &root()).await.unwrap();
    assert!(a.authenticate(&s.session).is_err());
    a.set_disabled("tech", false, &root()).await.unwrap();

    let s = a
        .login("tech", "a brand new passphrase", addr(1))
        .await
        .result
        .unwrap();
    a.remove_user("tech", &root()).await.unwrap();
    assert!(a.authenticate(&s.session).is_err());
    // Nobody else's session ended.
    a.authenticate(&boss.session).unwrap();
}

#[tokio::test]
async fn a_new_role_applies_to_running_sessions_at_once() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    let s = login(&f, "tech").await;
    f.accounts
        .set_role("tech", Role::Viewer, &root())
        .await
        .unwrap();
    assert_eq!(
        f.accounts.authenticate(&s.session).unwrap().role,
        Role::Viewer
    );
}

#[tokio::test]
async fn sessions_do_not_survive_a_restart() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let s = login(&f, "tech").await;
    let f = f.reopen();
    assert!(matches!(
        f.accounts.authenticate(&s.session),
        Err(AccountError::UnknownSession)
    ));
}

#[tokio::test]
async fn beyond_the_most_sessions_held_the_one_unused_longest_ends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
    let options = Options {
        clock: clock.clone(),
        sessions: SessionPolicy {
            max_sessions: 3,
            ..SessionPolicy::default()
        },
        ..Options::default()
    };
    let a = Accounts::open_with(dir.path(), options).unwrap();
    a.add_user("tech", Role::Technician, PASSWORD, &root())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            a.login("tech", PASSWORD, addr(1))
                .await
                .result
                .unwrap()
                .session,
        );
        clock.advance(minutes(1));
    }
    // The first is used again, so the second is the one unused longest.
    a.authenticate(&ids[0]).unwrap();
    let fourth = a.login("tech", PASSWORD, addr(1)).await.result.unwrap();
    assert_eq!(a.sessions_of("tech"), 3);
    assert!(a.authenticate(&ids[1]).is_err());
    for id in [&ids[0], &ids[2], &fourth.session] {
        a.authenticate(id).unwrap();
    }
}
