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
