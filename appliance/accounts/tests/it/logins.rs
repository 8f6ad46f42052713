//! Logins: verification, the two-at-a-time hashing, lockout per (address, account) and
//! slowdown per account.

use std::time::Duration;

use accounts::{AccountError, LoginPolicy, MAX_CONCURRENT_HASHES, Role};
use audit::{EventKind, Outcome};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_two_password_hashes_run_at_once() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let logins: Vec<_> = (0..8u8)
        .map(|i| {
            let a = f.accounts.clone();
            // Right and wrong passwords, known and unknown users: each costs one hash.
            tokio::spawn(async move {
                let (name, pw) = match i % 3 {
                    0 => ("tech", PASSWORD),
                    1 => ("tech", "wrong password!"),
                    _ => ("nobody", PASSWORD),
                };
                a.login(name, pw, addr(100 + i)).await
            })
        })
        .collect();
    for l in logins {
        l.await.unwrap();
    }
    assert_eq!(MAX_CONCURRENT_HASHES, 2);
    assert_eq!(
        f.accounts.hashes_peak(),
        2,
        "the hashes did not overlap, or more than two did"
    );
    assert_eq!(f.accounts.hashes_running(), 0);
}

#[tokio::test]
async fn a_login_returns_a_session_and_an_audit_event_and_a_failure_says_why_only_in_the_event() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let ok = f.accounts.login("tech", PASSWORD, addr(1)).await;
    let login = ok.result.unwrap();
    assert_eq!(
        (login.user.as_str(), login.role),
        ("tech", Role::Technician)
    );
    assert_eq!(login.session.len(), 64);
    assert_ne!(login.session, login.csrf);
    assert_eq!(ok.delay, Duration::ZERO);
    assert_eq!(
        (ok.event.event, ok.event.outcome),
        (EventKind::Login, Outcome::Success)
    );
    assert_eq!(ok.event.peer.as_deref(), Some("10.0.0.1"));
    assert_eq!(
        ok.event.actor.as_ref().unwrap().role.as_deref(),
        Some("technician")
    );

    let wrong = f.accounts.login("tech", "not the password", addr(1)).await;
    let unknown = f.accounts.login("nobody", PASSWORD, addr(1)).await;
    // The person at the form is told the same for both.
    assert_eq!(
        wrong.result.unwrap_err().to_string().replace("tech", "X"),
        unknown
            .result
            .unwrap_err()
            .to_string()
            .replace("nobody", "X")
    );
    assert_eq!(wrong.event.outcome, Outcome::MinorFailure);
    assert_eq!(
        wrong.event.detail.as_deref(),
        Some("login refused: wrong password")
    );
    assert_eq!(
        unknown.event.detail.as_deref(),
        Some("login refused: no such user")
    );
}

#[tokio::test]
async fn failures_lock_out_one_address_from_one_account_and_no_other() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    f.add("other", Role::Viewer).await;
    let p = LoginPolicy::default();
    let a = &f.accounts;
    for _ in 0..p.lockout_after {
        let r = a.login("tech", "guessing guessing", addr(66)).await.result;
        assert!(
            matches!(r, Err(AccountError::BadCredentials { .. })),
            "{r:?}"
        );
    }
    // Even the right password from that address is refused now, without being checked.
    let locked = a.login("tech", PASSWORD, addr(66)).await;
    match locked.result {
        Err(AccountError::LockedOut {
            retry_after, from, ..
        }) => {
            assert_eq!(retry_after, p.lockout_for);
            assert_eq!(from, addr(66));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(locked.event.outcome, Outcome::MinorFailure);
    // The technician logs in from elsewhere, and the attacker's address may still try
    // other accounts.
    assert!(a.login("tech", PASSWORD, addr(7)).await.result.is_ok());
    assert!(a.login("other", PASSWORD, addr(66)).await.result.is_ok());
    // The lockout ends by itself.
    f.advance(p.lockout_for - Duration::from_secs(1));
    assert!(matches!(
        a.login("tech", PASSWORD, addr(66)).await.result,
        Err(AccountError::LockedOut { retry_after, .. }) if retry_after == Duration::from_secs(1)
    ));
    f.advance(Duration::from_secs(1));
    assert!(a.login("tech", PASSWORD, addr(66)).await.result.is_ok());
}

#[tokio::test]
async fn failures_from_many_addresses_slow_an_account_down_more_and_more_but_never_lock_it() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let a = &f.accounts;
    let mut delays = Vec::new();
    // One failure per address: no address reaches its lockout.
    for i in 0..9 {
        let attempt = a.login("tech", "guessing guessing", addr(10 + i)).await;
        assert!(matches!(
            attempt.result,
            Err(AccountError::BadCredentials { .. })
        ));
        delays.push(attempt.delay.as_secs());
    }
    assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 10, 10]);
    // The right password still works, from anywhere, after the same delay.
    let ok = a.login("tech", PASSWORD, addr(200)).await;
    assert!(ok.result.is_ok());
    assert_eq!(ok.delay, Duration::from_secs(10));
    // Other accounts are not slowed down.
    f.add("other", Role::Viewer).await;
    assert_eq!(
        a.login("other", PASSWORD, addr(10)).await.delay,
        Duration::ZERO
    );
    // A quiet spell forgets the failures.
    f.advance(LoginPolicy::default().forget_after);
    assert_eq!(
        a.login("tech", PASSWORD, addr(200)).await.delay,
        Duration::ZERO
    );
}

#[tokio::test]
async fn unlock_clears_the_lockouts_and_the_slowdown() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let a = &f.accounts;
    for _ in 0..LoginPolicy::default().lockout_after {
        a.login("tech", "guessing guessing", addr(66)).await;
    }
    assert!(matches!(
        a.login("tech", PASSWORD, addr(66)).await.result,
        Err(AccountError::LockedOut { .. })
    ));
    let event = a.unlock("tech", &root()).unwrap();
    assert_eq!(
        event.detail.as_deref(),
        Some("unlocked user tech (1 address(es) had failed logins)")
    );
    let attempt = a.login("tech", PASSWORD, addr(66)).await;
    assert!(attempt.result.is_ok());
    assert_eq!(attempt.delay, Duration::ZERO);
    assert!(matches!(
        a.unlock("nobody", &root()),
        Err(AccountError::UnknownUser(_))
    ));
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in_until_enabled() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let a = &f.accounts;
    a.set_disabled("tech", true, &root()).await.unwrap();
    let attempt = a.login("tech", PASSWORD, addr(1)).await;
    assert!(
        matches!(attempt.result, Err(AccountError::Disabled(_))),
        "{:?}",
        attempt.result
    );
    assert_eq!(
        attempt.event.detail.as_deref(),
        Some("login refused: the user is disabled")
    );
    a.set_disabled("tech", false, &root()).await.unwrap();
    assert!(a.login("tech", PASSWORD, addr(1)).await.result.is_ok());
}

#[tokio::test]
async fn a_new_password_replaces_the_old_one() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let a = &f.accounts;
    let short = a.set_password("tech", "tiny", &root()).await.unwrap_err();
    assert!(matches!(short, AccountError::PasswordTooShort { .. }));
    a.set_password("tech", "a brand new passphrase", &root())
        .await
        .unwrap();
    assert!(a.login("tech", PASSWORD, addr(1)).await.result.is_err());
    assert!(
        a.login("tech", "a brand new passphrase", addr(1))
            .await
            .result
            .is_ok()
    );
    assert!(matches!(
        a.set_password("nobody", PASSWORD, &root()).await,
        Err(AccountError::UnknownUser(_))
    ));
}
