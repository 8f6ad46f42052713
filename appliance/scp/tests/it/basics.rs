//! Echo, store and find end to end.

use dataset::encode::write_element;
use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dimse::Status;
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};

pub const OPEN: &str = r#"
[dicom]
ae_title = "OUTPOST"
accept_unknown_callers = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_store_find() {
    let app = Appliance::start(OPEN).await;
    let mut scu = Scu::connect(
        app.addr,
        "TESTSCU",
        "OUTPOST",
        &[
            (dimse::VERIFICATION, &[IMPLICIT_LE]),
            (CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    for i in 1..=3 {
        let inst = SynthInstance::ct(1, 1, 1, i);
        let rsp = scu
            .store(
                CT,
                &inst.sop_uid,
                None,
                &inst.dataset(Encoding::EXPLICIT_LE),
            )
            .await
            .unwrap();
        assert_eq!(rsp.status, Some(Status::SUCCESS));
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some(inst.sop_uid.as_str())
        );
    }
    let mut q = Vec::new();
    let enc = Encoding::IMPLICIT_LE;
    write_element(&mut q, enc, tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY ");
    write_element(&mut q, enc, tags::PATIENT_ID, Vr::LO, b"PID00001");
    write_element(&mut q, enc, tags::STUDY_INSTANCE_UID, Vr::UI, b"");
    write_element(
        &mut q,
        enc,
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        Vr::IS,
        b"",
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(matches.len(), 1);
    let w = dataset::walk::walk_all(
        dataset::ts::syntax_info(IMPLICIT_LE).unwrap(),
        dataset::Capture::All { max_len: 1024 },
        &matches[0],
    )
    .unwrap();
    assert_eq!(
        w.get(tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
            .unwrap()
            .value,
        b"3 "
    );
    assert_eq!(w.get(tags::QUERY_RETRIEVE_LEVEL).unwrap().value, b"STUDY ");
    scu.release().await.unwrap();
    let (_, stopped) = app.stop().await;
    assert_eq!(stopped.aborted, 0);
}
