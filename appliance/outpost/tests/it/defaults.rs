//! The embedded default keeps its promises: loopback only, AE OUTPOST on 11112, data in
//! ./outpost-data, full durability, unknown callers only from this machine.

#[test]
fn the_embedded_default_is_safe_for_a_newcomer() {
    let c = config::Config::embedded();
    assert!(c.dicom.bind.is_loopback());
    assert_eq!(c.dicom.ae_title.as_str(), "OUTPOST");
    assert_eq!(c.dicom.port, 11112);
    assert_eq!(
        c.dicom.accept_unknown_callers,
        config::UnknownCallers::Loopback
    );
    assert_eq!(c.storage.durability, config::Durability::Full);
    assert_eq!(
        c.storage.data_dir,
        std::path::PathBuf::from("./outpost-data")
    );
    assert!(c.dicom.tls.is_none());
}

/// `check-config` runs the validation `serve` runs at start, and reports every problem at
/// once: here a DICOM TLS certificate that is not there and a routing rule on an attribute
/// the archive does not index, both in one run of the real binary.
#[test]
fn check_config_reports_a_missing_tls_certificate_and_a_bad_rule_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    let missing = dir.path().join("no-such-server.crt");
    std::fs::write(
        &file,
        format!(
            r#"
[dicom]
ae_title = "OUTPOST"

[dicom.tls]
port = 2762
certificate = "{}"
private_key = "{}"

[storage]
data_dir = "{}"

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = 104

[[forward.rule]]
name = "private tag"
match = {{ "(0019,1001)" = "X" }}
destinations = ["central"]
"#,
            missing.display(),
            dir.path().join("no-such-server.key").display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains("no-such-server.crt"), "{stderr}");
    assert!(stderr.contains("private tag"), "{stderr}");
    // And serve refuses the same file for the same reasons, before it opens anything.
    let c = config::Config::load(&file).unwrap();
    let invalid = supervisor::validate(&c).unwrap_err();
    assert_eq!(invalid.problems.len(), 2, "{invalid}");
}
