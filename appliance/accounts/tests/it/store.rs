//! The durable store: it reopens with its data, refuses a file that needs a newer reader
//! (leaving it as it was), and leaves alone the tables a newer version added.
//!
//! The raw redb accesses below are the format's contract as `store.rs` documents it: the
//! `meta` table of `&str` to `u64` and its `min_reader_version` key.

use std::time::Duration;

use accounts::{AccountError, Accounts, FILE_NAME, FORMAT_VERSION, Role, Scope};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::*;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// A table as a later format might add one: new fields of a user, keyed by user id.
const NEWER: TableDefinition<u64, &str> = TableDefinition::new("users_v2_second_factor");

fn meta(path: &Path, key: &str) -> Option<u64> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(META).unwrap();
    table.get(key).unwrap().map(|v| v.value())
}

fn set_meta(path: &Path, key: &str, value: u64) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert(key, value).unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn the_store_reopens_with_its_users_and_tokens() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    f.accounts
        .set_disabled("tech", true, &root())
        .await
        .unwrap();
    let (token, _) = f
        .accounts
        .create_token("boss", Scope::Read, &root())
        .await
        .unwrap();
    let before = f.accounts.users();
    assert_eq!(f.accounts.path(), f.dir.path().join(FILE_NAME));

    let f = f.reopen();
    assert_eq!(f.accounts.users(), before);
    assert!(f.accounts.user("tech").unwrap().disabled);
    assert_eq!(f.accounts.verify_token(&token.secret).unwrap().user, "boss");
    assert!(
        f.accounts
            .login("boss", PASSWORD, addr(1))
            .await
            .result
            .is_ok()
    );
    let path = f.accounts.path();
    drop(f.accounts);
    assert_eq!(meta(&path, "min_reader_version"), Some(1));
    assert_eq!(meta(&path, "last_writer_version"), Some(FORMAT_VERSION));
}

#[tokio::test]
async fn the_data_directory_is_made_if_missing_and_the_file_is_the_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not/yet/there");
    let (accounts, _) = open(&data);
    accounts
        .add_user("boss", Role::Admin, PASSWORD, &root())
        .await
        .unwrap();
    // Password hashes are for the service's user alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join(FILE_NAME))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[tokio::test]
async fn a_file_that_needs_a_newer_reader_is_refused_and_left_as_it_was() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    let path = f.accounts.path();
    drop(f.accounts);
    set_meta(&path, "min_reader_version", FORMAT_VERSION + 1);
    let bytes = std::fs::read(&path).unwrap();

    let e = match Accounts::open(f.dir.path()) {
        Err(e) => e,
        Ok(_) => panic!("a file for readers of format 2 was opened"),
    };
    match &e {
        AccountError::TooNew {
            min_reader_version,
            ours,
            ..
        } => assert_eq!(
            (*min_reader_version, *ours),
            (FORMAT_VERSION + 1, FORMAT_VERSION)
        ),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("run the newer Outpost"), "{e}");
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the refused file was changed"
    );
}

#[tokio::test]
async fn tables_and_keys_a_newer_version_wrote_are_left_intact() {
    let f = Fixture::new();
    f.add("boss", Role::Admin).await;
    f.add("tech", Role::Technician).await;
    let path = f.accounts.path();
    drop(f.accounts);
    // A newer build ran, added a table and a meta key, and said format 1 can still read it.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(NEWER)
            .unwrap()
            .insert(1, "totp:secret-ish")
            .unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("last_writer_version", FORMAT_VERSION + 1)
            .unwrap();
        meta.insert("derived_counts_version", 7).unwrap();
        drop(meta);
        txn.commit().unwrap();
    }

    // This older build opens it, reads it and writes to it.
    let (accounts, _) = open(f.dir.path());
    assert_eq!(accounts.users().len(), 2);
    accounts.remove_user("tech", &root()).await.unwrap();
    accounts
        .add_user("viewer", Role::Viewer, PASSWORD, &root())
        .await
        .unwrap();
    accounts
        .create_token("boss", Scope::Read, &root())
        .await
        .unwrap();
    drop(accounts);

    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let newer = txn.open_table(NEWER).unwrap();
    assert_eq!(newer.get(1).unwrap().unwrap().value(), "totp:secret-ish");
    drop((newer, txn, db));
    assert_eq!(meta(&path, "derived_counts_version"), Some(7));
    assert_eq!(meta(&path, "min_reader_version"), Some(1));
    // It says it wrote last, so the newer build can rebuild what it derives.
    assert_eq!(meta(&path, "last_writer_version"), Some(FORMAT_VERSION));
}

#[tokio::test]
async fn times_are_kept_and_a_change_moves_only_the_changed_time() {
    let f = Fixture::new();
    f.add("tech", Role::Technician).await;
    let created = f.accounts.user("tech").unwrap();
    assert_eq!(created.created, created.changed);
    f.advance(Duration::from_secs(3600));
    f.accounts
        .set_role("tech", Role::Viewer, &root())
        .await
        .unwrap();
    let changed = f.accounts.user("tech").unwrap();
    assert_eq!(changed.created, created.created);
    assert_eq!(changed.changed, created.created + Duration::from_secs(3600));
    let f = f.reopen();
    assert_eq!(f.accounts.user("tech").unwrap(), changed);
}
