//! C-STORE: every transfer syntax stored as received and read back byte for byte, SOP class
//! negotiation (private and non-storage classes), each refusal status, duplicates, a full
//! disk, and a large instance in small PDUs.

use std::io::Write;

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dicom_ul::pdu::PresentationContextResultReason;
use dimse::Status;
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, MR, Scu};

use crate::support::{
    RawPeer, association_rq, context_result, identifier, instance_count, open_config, store_on,
    stored, tmp_files,
};

const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const PRIVATE_CLASS: &str = "1.3.6.1.4.1.9999.1";
const WORKLIST_FIND: &str = "1.2.840.10008.5.1.4.31";

/// Stores one instance in `ts` on a fresh association, then fetches it back with a C-GET
/// that proposes the same transfer syntax, and checks both copies are the bytes sent.
async fn round_trip(app: &Appliance, inst: &SynthInstance, ts: &str, data: &[u8]) {
    let mut scu = Scu::connect(app.addr, "MODALITY", "OUTPOST", &[(CT, &[ts])], &[])
        .await
        .unwrap();
    assert_eq!(scu.context(CT, None).map(|(_, t)| t).as_deref(), Some(ts));
    let rsp = scu.store(CT, &inst.sop_uid, Some(ts), data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    scu.release().await.unwrap();

    let (stored_ts, stored_bytes) = stored(app, &inst.sop_uid).expect("stored");
    assert_eq!(stored_ts, ts);
    assert!(stored_bytes == data, "the archive changed the data set");

    let mut getter = Scu::connect(
        app.addr,
        "VIEWER",
        "OUTPOST",
        &[(dimse::STUDY_ROOT_GET, &[IMPLICIT_LE]), (CT, &[ts])],
        &[CT],
    )
    .await
    .unwrap();
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"IMAGE"),
            (tags::SOP_INSTANCE_UID, Vr::UI, inst.sop_uid.as_bytes()),
        ],
    );
    let (received, responses) = getter
        .get(dimse::STUDY_ROOT_GET, &q, Status::SUCCESS)
        .await
        .unwrap();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].0.status, Some(Status::SUCCESS));
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].transfer_syntax, ts);
    assert_eq!(
        received[0].command.affected_sop_instance_uid.as_deref(),
        Some(inst.sop_uid.as_str())
    );
    assert!(received[0].data == data, "C-GET changed the data set");
    getter.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_le_is_stored_as_received() {
    let app = Appliance::start(&open_config("")).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    round_trip(
        &app,
        &inst,
        IMPLICIT_LE,
        &inst.dataset(Encoding::IMPLICIT_LE),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_le_is_stored_as_received() {
    let app = Appliance::start(&open_config("")).await;
    let inst = SynthInstance::ct(1, 1, 1, 2);
    round_trip(
        &app,
        &inst,
        EXPLICIT_LE,
        &inst.dataset(Encoding::EXPLICIT_LE),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_be_is_stored_as_received() {
    let app = Appliance::start(&open_config("")).await;
    let inst = SynthInstance::ct(1, 1, 1, 3);
    round_trip(
        &app,
        &inst,
        EXPLICIT_BE,
        &inst.dataset(Encoding::EXPLICIT_BE),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflated_is_stored_as_received() {
    let app = Appliance::start(&open_config("")).await;
    let inst = SynthInstance::ct(1, 1, 1, 4);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&inst.dataset(Encoding::EXPLICIT_LE)).unwrap();
    let deflated = z.finish().unwrap();
    round_trip(&app, &inst, DEFLATED, &deflated).await;
    app.stop().await;
}

/// The instance in Explicit VR Little Endian with made-up encapsulated pixel data.
fn encapsulated(inst: &SynthInstance) -> Vec<u8> {
    let mut no_pixels = inst.clone();
    no_pixels.pixel_bytes = 0;
    let mut out = no_pixels.dataset(Encoding::EXPLICIT_LE);
    // Drop the empty native Pixel Data element (tag, VR, reserved, 32-bit length).
    let tail = out.split_off(out.len() - 12);
    assert_eq!(&tail[..6], b"\xE0\x7F\x10\x00OW");
    let item = |out: &mut Vec<u8>, value: &[u8]| {
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    };
    out.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    item(&mut out, &[]); // empty basic offset table
    let mut frame = vec![0xFF, 0xD8, 0xFF, 0xE0];
    frame.extend(dataset::synth::noise(7, 300));
    frame.extend_from_slice(&[0xFF, 0xD9]);
    item(&mut out, &frame[..150]);
    item(&mut out, &frame[150..]);
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encapsulated_jpeg_is_stored_as_received() {
    let app = Appliance::start(&open_config("")).await;
    let inst = SynthInstance::ct(1, 1, 1, 5);
    round_trip(&app, &inst, JPEG_BASELINE, &encapsulated(&inst)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_sop_class_is_rejected_by_default() {
    let app = Appliance::start(&open_config("")).await;
    let rq = association_rq(
        "MODALITY",
        "OUTPOST",
        &[(PRIVATE_CLASS, &[EXPLICIT_LE]), (CT, &[EXPLICIT_LE])],
    );
    let (mut peer, ac) = RawPeer::accepted(app.addr, rq).await;
    assert_eq!(
        context_result(&ac, 1),
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    assert_eq!(
        context_result(&ac, 3),
        PresentationContextResultReason::Acceptance
    );
    peer.send(&dicom_ul::pdu::Pdu::ReleaseRQ).await;
    assert_eq!(peer.next().await, Some(dicom_ul::pdu::Pdu::ReleaseRP));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_sop_class_is_stored_when_unknown_classes_are_accepted() {
    let app = Appliance::start(&open_config("accept_unknown_sop_classes = true")).await;
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.sop_class = PRIVATE_CLASS.into();
    let data = inst.dataset(Encoding::EXPLICIT_LE);
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(PRIVATE_CLASS, &[EXPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    let rsp = scu
        .store(PRIVATE_CLASS, &inst.sop_uid, None, &data)
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(PRIVATE_CLASS));
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 1);
    assert_eq!(
        stored(&app, &inst.sop_uid),
        Some((EXPLICIT_LE.into(), data))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worklist_is_not_taken_for_storage_even_with_unknown_classes() {
    let app = Appliance::start(&open_config("accept_unknown_sop_classes = true")).await;
    let rq = association_rq(
        "MODALITY",
        "OUTPOST",
        &[
            (WORKLIST_FIND, &[IMPLICIT_LE]),
            (PRIVATE_CLASS, &[IMPLICIT_LE]),
        ],
    );
    let (mut peer, ac) = RawPeer::accepted(app.addr, rq).await;
    assert_eq!(
        context_result(&ac, 1),
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    assert_eq!(
        context_result(&ac, 3),
        PresentationContextResultReason::Acceptance
    );
    peer.send(&dicom_ul::pdu::Pdu::ReleaseRQ).await;
    assert_eq!(peer.next().await, Some(dicom_ul::pdu::Pdu::ReleaseRP));
    app.stop().await;
}

/// One association on CT (Explicit LE) plus Verification.
async fn modality(app: &Appliance) -> Scu {
    Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(CT, &[EXPLICIT_LE]), (dimse::VERIFICATION, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_data_set_fails_with_c001_and_nothing_is_stored() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    // A valid start, then an element with a VR that does not exist.
    let mut data = identifier(
        Encoding::EXPLICIT_LE,
        &[(tags::SOP_CLASS_UID, Vr::UI, CT.as_bytes())],
    );
    data.extend_from_slice(b"\x08\x00\x18\x00Q!\x04\x001234");
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::CANNOT_PARSE));
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("malformed")),
        "{:?}",
        rsp.error_comment
    );
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    assert_eq!(stored(&app, &inst.sop_uid), None);
    assert_eq!(tmp_files(&app), Vec::<std::path::PathBuf>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sop_instance_uid_differing_from_the_command_fails_with_c003() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let other = SynthInstance::ct(1, 1, 1, 2);
    let rsp = scu
        .store(
            CT,
            &other.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::INSTANCE_MISMATCH));
    assert_eq!(
        rsp.affected_sop_instance_uid.as_deref(),
        Some(other.sop_uid.as_str())
    );
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    assert_eq!(tmp_files(&app), Vec::<std::path::PathBuf>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_study_instance_uid_fails_with_c002() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app).await;
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.study_uid = String::new();
    let rsp = scu
        .store(
            CT,
            &inst.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::MISSING_ATTRIBUTE));
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("StudyInstanceUID")),
        "{:?}",
        rsp.error_comment
    );
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_sop_class_differing_from_the_context_gets_0122() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app).await;
    let (ct_pc, _) = scu.context(CT, None).unwrap();
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.sop_class = MR.into();
    let rsp = store_on(
        &mut scu,
        ct_pc,
        MR,
        &inst.sop_uid,
        &inst.dataset(Encoding::EXPLICIT_LE),
    )
    .await;
    assert_eq!(rsp.status, Some(Status::SOP_CLASS_NOT_SUPPORTED));
    assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(MR));
    // The association goes on.
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    let ok = SynthInstance::ct(1, 1, 1, 2);
    let rsp = scu
        .store(CT, &ok.sop_uid, None, &ok.dataset(Encoding::EXPLICIT_LE))
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_set_sop_class_differing_from_the_command_fails_with_a900() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app).await;
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.sop_class = MR.into();
    let rsp = scu
        .store(
            CT,
            &inst.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::DOES_NOT_MATCH_SOP_CLASS));
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_with_keep_first_succeeds_and_keeps_one_instance() {
    let app = Appliance::start(&format!(
        "{}\n[storage]\nduplicates = \"keep-first\"\n",
        open_config("")
    ))
    .await;
    let mut scu = modality(&app).await;
    let first = SynthInstance::ct(1, 1, 1, 1);
    let mut second = first.clone();
    second.study_description = b"CT CHEST AGAIN".to_vec();
    for inst in [&first, &second] {
        let rsp = scu
            .store(
                CT,
                &inst.sop_uid,
                None,
                &inst.dataset(Encoding::EXPLICIT_LE),
            )
            .await
            .unwrap();
        assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    }
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 1);
    assert_eq!(
        stored(&app, &first.sop_uid),
        Some((EXPLICIT_LE.into(), first.dataset(Encoding::EXPLICIT_LE)))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_space_is_refused_with_a700_and_the_association_goes_on() {
    let app = Appliance::start_with(&open_config(""), |store| {
        store.min_free_bytes = u64::MAX;
    })
    .await;
    let mut scu = modality(&app).await;
    for i in 1..=2 {
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
        assert_eq!(rsp.status, Some(Status::OUT_OF_RESOURCES));
        assert!(
            rsp.error_comment
                .as_deref()
                .is_some_and(|c| c.contains("bytes free")),
            "{:?}",
            rsp.error_comment
        );
        assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    }
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    assert_eq!(tmp_files(&app), Vec::<std::path::PathBuf>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_instance_in_small_pdus_is_stored_intact() {
    // The smallest PDU the listener may announce; the data set arrives in ~5000 PDUs.
    let app = Appliance::start(&open_config("max_pdu = 4096")).await;
    let mut scu = modality(&app).await;
    assert_eq!(scu.channel().max_fragment(), 4096 - 6);
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.rows = 2048;
    inst.columns = 5120;
    inst.pixel_bytes = 2048 * 5120 * 2;
    let data = inst.dataset(Encoding::EXPLICIT_LE);
    assert!(data.len() > 20_000_000);
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    scu.release().await.unwrap();
    let (ts, bytes) = stored(&app, &inst.sop_uid).unwrap();
    assert_eq!(ts, EXPLICIT_LE);
    assert_eq!(bytes.len(), data.len());
    assert!(bytes == data, "the large instance was altered");
    app.stop().await;
}
