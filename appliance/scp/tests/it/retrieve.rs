//! C-MOVE (to a second appliance) and C-GET (on the requestor's association): instances
//! arrive byte for byte or converted as negotiated, progress counts, refusals, receivers that
//! fail sub-operations, and C-CANCEL.

use std::collections::BTreeMap;

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dimse::{Command, CommandField, Status};
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};

use crate::support::{identifier, instance_count, open_config, store_all, stored, value, walk};

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

fn series(n: u32) -> Vec<SynthInstance> {
    (1..=n).map(|i| SynthInstance::ct(1, 1, 1, i)).collect()
}

/// An appliance holding `instances` (Explicit LE) that knows `remotes` as move destinations.
async fn source(instances: &[SynthInstance], remotes: &str) -> Appliance {
    let app = Appliance::start(&format!("{}\n{remotes}", open_config(""))).await;
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(CT, &[EXPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    store_all(&mut scu, instances, EXPLICIT_LE, Encoding::EXPLICIT_LE).await;
    scu.release().await.unwrap();
    app
}

fn remote(ae: &str, port: u16) -> String {
    format!("[[dicom.remote]]\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\n")
}

/// A destination appliance called DEST.
async fn destination(adjust: impl FnOnce(&mut store::StoreConfig) + Send + 'static) -> Appliance {
    Appliance::start_with(
        "[dicom]\nae_title = \"DEST\"\naccept_unknown_callers = true\n",
        adjust,
    )
    .await
}

fn study_identifier(inst: &SynthInstance) -> Vec<u8> {
    identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, inst.study_uid.as_bytes()),
        ],
    )
}

async fn mover(app: &Appliance) -> Scu {
    Scu::connect(
        app.addr,
        "WORKSTATION",
        "OUTPOST",
        &[(dimse::STUDY_ROOT_MOVE, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap()
}

/// (status, remaining, completed, failed, warning) of a C-MOVE or C-GET response.
fn progress(rsp: &Command) -> (Status, Option<u16>, Option<u16>, Option<u16>, Option<u16>) {
    (
        rsp.status.expect("status"),
        rsp.remaining,
        rsp.completed,
        rsp.failed,
        rsp.warning,
    )
}

/// The Failed SOP Instance UID List of a final response's identifier.
fn failed_list(data: &Option<Vec<u8>>) -> Vec<u8> {
    let data = data
        .as_ref()
        .expect("a final response with failures lists them");
    let w = walk(IMPLICIT_LE, data);
    dataset::encode::trim_padding(&value(&w, tags::FAILED_SOP_INSTANCE_UID_LIST)).to_vec()
}

fn joined_uids(instances: &[SynthInstance]) -> Vec<u8> {
    instances
        .iter()
        .map(|i| i.sop_uid.as_str())
        .collect::<Vec<_>>()
        .join("\\")
        .into_bytes()
}

/// Checks the responses of a retrieval of two instances whose receiver refused both: one
/// pending response after the first failure, then 0xA702 listing both instances.
fn assert_both_sub_operations_failed(
    responses: &[(Command, Option<Vec<u8>>)],
    instances: &[SynthInstance],
) {
    let got: Vec<_> = responses.iter().map(|(r, _)| progress(r)).collect();
    assert_eq!(
        got,
        vec![
            (Status::PENDING, Some(1), Some(0), Some(1), Some(0)),
            (
                Status::OUT_OF_RESOURCES_SUBOPS,
                None,
                Some(0),
                Some(2),
                Some(0)
            ),
        ]
    );
    assert_eq!(
        failed_list(&responses.last().unwrap().1),
        joined_uids(instances)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_second_appliance_delivers_every_instance_byte_for_byte() {
    let dest = destination(|_| {}).await;
    let instances = series(3);
    let app = source(&instances, &remote("DEST", dest.addr.port())).await;
    let mut scu = mover(&app).await;
    let responses = scu
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "DEST",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    let got: Vec<_> = responses.iter().map(|(r, _)| progress(r)).collect();
    assert_eq!(
        got,
        vec![
            (Status::PENDING, Some(2), Some(1), Some(0), Some(0)),
            (Status::PENDING, Some(1), Some(2), Some(0), Some(0)),
            (Status::SUCCESS, None, Some(3), Some(0), Some(0)),
        ]
    );
    for (rsp, data) in &responses {
        assert_eq!(rsp.field, CommandField::C_MOVE_RSP);
        assert_eq!(
            rsp.affected_sop_class_uid.as_deref(),
            Some(dimse::STUDY_ROOT_MOVE)
        );
        assert!(data.is_none());
    }
    scu.release().await.unwrap();
    assert_eq!(instance_count(&dest), 3);
    for inst in &instances {
        assert_eq!(
            stored(&dest, &inst.sop_uid),
            Some((EXPLICIT_LE.into(), inst.dataset(Encoding::EXPLICIT_LE))),
            "{}",
            inst.sop_uid
        );
    }
    app.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_an_unknown_destination_is_refused_with_a801() {
    let instances = series(1);
    let app = source(&instances, "").await;
    let mut scu = mover(&app).await;
    let responses = scu
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "NOWHERE",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    assert_eq!(responses.len(), 1);
    let rsp = &responses[0].0;
    assert_eq!(rsp.status, Some(Status::MOVE_DESTINATION_UNKNOWN));
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("NOWHERE")),
        "{:?}",
        rsp.error_comment
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_destination_that_is_down_is_refused_with_a702() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let instances = series(2);
    let app = source(&instances, &remote("DOWN", port)).await;
    let mut scu = mover(&app).await;
    let responses = scu
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "DOWN",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].0.status, Some(Status::OUT_OF_RESOURCES_SUBOPS));
    // The association goes on.
    let mut again = mover(&app).await;
    let responses = again
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "NOWHERE",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    assert_eq!(
        responses[0].0.status,
        Some(Status::MOVE_DESTINATION_UNKNOWN)
    );
    again.release().await.unwrap();
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_receiver_that_refuses_everything_ends_with_a702() {
    // When no sub-operation succeeded the final status was 0xB000 ("completed, with
    // failures"), which requestors read as "some arrived"; dcm4che and Google's adapter
    // answer 0xA702 (out of resources, unable to perform sub-operations), as PS3.4 C.4.2.1.5
    // provides. The destination's disk is "full": it answers every C-STORE with 0xA700.
    let dest = destination(|s| s.min_free_bytes = u64::MAX).await;
    let instances = series(2);
    let app = source(&instances, &remote("DEST", dest.addr.port())).await;
    let mut scu = mover(&app).await;
    let responses = scu
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "DEST",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    assert_both_sub_operations_failed(&responses, &instances);
    scu.release().await.unwrap();
    assert_eq!(instance_count(&dest), 0);
    app.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_move_ends_it_with_fe00() {
    let dest = destination(|_| {}).await;
    let instances = series(40);
    let app = source(&instances, &remote("DEST", dest.addr.port())).await;
    let mut scu = mover(&app).await;
    let id = scu
        .start_move(
            dimse::STUDY_ROOT_MOVE,
            "DEST",
            &study_identifier(&instances[0]),
        )
        .await
        .unwrap();
    scu.cancel(dimse::STUDY_ROOT_MOVE, id).await.unwrap();
    let mut responses = Vec::new();
    let (last, last_data) = loop {
        let (rsp, data) = scu.response_with_data().await.unwrap();
        assert_eq!(rsp.message_id_responded_to, Some(id));
        if rsp.status == Some(Status::PENDING) {
            responses.push(rsp);
        } else {
            break (rsp, data);
        }
    };
    assert_eq!(last.status, Some(Status::CANCEL));
    let completed = last.completed.expect("completed count");
    assert!(completed < 40, "{completed} of 40 sent despite the cancel");
    assert_eq!(last.failed, Some(0));
    assert_eq!(usize::from(completed), responses.len());
    // A Cancel response said nothing of what was left: it now carries the Remaining count
    // and lists the instances never attempted, so the requestor knows what to ask again.
    assert_eq!(last.remaining, Some(40 - completed));
    let listed = failed_list(&last_data);
    let unsent: std::collections::BTreeSet<&str> =
        std::str::from_utf8(&listed).unwrap().split('\\').collect();
    assert_eq!(unsent.len(), 40 - usize::from(completed));
    assert!(
        unsent
            .iter()
            .all(|uid| instances.iter().any(|i| i.sop_uid == *uid))
    );
    scu.release().await.unwrap();
    app.stop().await;
    // What was reported sent did arrive, and what was listed as unsent did not.
    assert_eq!(instance_count(&dest), u64::from(completed));
    assert!(unsent.iter().all(|uid| dest.stored_dataset(uid).is_none()));
    dest.stop().await;
}

async fn getter(app: &Appliance, ct_syntaxes: &[&str], roles: &[&str]) -> Scu {
    Scu::connect(
        app.addr,
        "VIEWER",
        "OUTPOST",
        &[(dimse::STUDY_ROOT_GET, &[IMPLICIT_LE]), (CT, ct_syntaxes)],
        roles,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_role_selection_delivers_on_the_same_association() {
    let instances = series(3);
    let app = source(&instances, "").await;
    let mut scu = getter(&app, &[EXPLICIT_LE], &[CT]).await;
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(&instances[0]),
            Status::SUCCESS,
        )
        .await
        .unwrap();
    let got: Vec<_> = responses.iter().map(|(r, _)| progress(r)).collect();
    assert_eq!(
        got,
        vec![
            (Status::PENDING, Some(2), Some(1), Some(0), Some(0)),
            (Status::PENDING, Some(1), Some(2), Some(0), Some(0)),
            (Status::SUCCESS, None, Some(3), Some(0), Some(0)),
        ]
    );
    assert!(
        responses
            .iter()
            .all(|(r, _)| r.field == CommandField::C_GET_RSP)
    );
    let by_uid: BTreeMap<String, &testkit::Received> = received
        .iter()
        .map(|r| (r.command.affected_sop_instance_uid.clone().unwrap(), r))
        .collect();
    assert_eq!(by_uid.len(), 3);
    for inst in &instances {
        let r = by_uid[&inst.sop_uid];
        assert_eq!(r.transfer_syntax, EXPLICIT_LE);
        assert_eq!(r.command.affected_sop_class_uid.as_deref(), Some(CT));
        assert!(r.command.move_originator_ae.is_none());
        assert!(
            r.data == inst.dataset(Encoding::EXPLICIT_LE),
            "{} altered",
            inst.sop_uid
        );
    }
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_converts_to_implicit_le_when_only_that_is_accepted() {
    let instances = series(1);
    let app = source(&instances, "").await;
    let mut scu = getter(&app, &[IMPLICIT_LE], &[CT]).await;
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(&instances[0]),
            Status::SUCCESS,
        )
        .await
        .unwrap();
    assert_eq!(responses.len(), 1);
    assert_eq!(
        progress(&responses[0].0),
        (Status::SUCCESS, None, Some(1), Some(0), Some(0))
    );
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].transfer_syntax, IMPLICIT_LE);
    assert!(
        received[0].data == instances[0].dataset(Encoding::IMPLICIT_LE),
        "not the Implicit LE encoding of the instance"
    );
    // The archive keeps what it received.
    assert_eq!(
        stored(&app, &instances[0].sop_uid).map(|(ts, _)| ts),
        Some(EXPLICIT_LE.to_string())
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_role_selection_fails_every_sub_operation() {
    let instances = series(3);
    let app = source(&instances, "").await;
    let mut scu = getter(&app, &[EXPLICIT_LE], &[]).await;
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(&instances[0]),
            Status::SUCCESS,
        )
        .await
        .unwrap();
    assert!(received.is_empty());
    let got: Vec<_> = responses.iter().map(|(r, _)| progress(r)).collect();
    assert_eq!(
        got,
        vec![
            (Status::PENDING, Some(2), Some(0), Some(1), Some(0)),
            (Status::PENDING, Some(1), Some(0), Some(2), Some(0)),
            (
                Status::OUT_OF_RESOURCES_SUBOPS,
                None,
                Some(0),
                Some(3),
                Some(0)
            ),
        ]
    );
    assert_eq!(
        failed_list(&responses.last().unwrap().1),
        joined_uids(&instances)
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_whose_receiver_refuses_everything_ends_with_a702() {
    let instances = series(2);
    let app = source(&instances, "").await;
    let mut scu = getter(&app, &[EXPLICIT_LE], &[CT]).await;
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(&instances[0]),
            Status::OUT_OF_RESOURCES,
        )
        .await
        .unwrap();
    assert_eq!(received.len(), 2);
    assert_both_sub_operations_failed(&responses, &instances);
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_some_sub_operations_failed_ends_with_b000() {
    // 0xA702 is for a retrieval that delivered nothing; one that delivered some and failed
    // others still ends with 0xB000 and lists only the failed ones.
    let ct = SynthInstance::ct(1, 1, 1, 1);
    let mut mr = SynthInstance::ct(1, 1, 2, 1);
    mr.modality = "MR".into();
    mr.sop_class = MR.into();
    let app = source(&[], "").await;
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(CT, &[EXPLICIT_LE]), (MR, &[EXPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    store_all(
        &mut scu,
        &[ct.clone(), mr.clone()],
        EXPLICIT_LE,
        Encoding::EXPLICIT_LE,
    )
    .await;
    scu.release().await.unwrap();
    // The viewer takes CT only: the MR sub-operation has no context and fails.
    let mut scu = getter(&app, &[EXPLICIT_LE], &[CT]).await;
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(&ct),
            Status::SUCCESS,
        )
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    let (last, data) = responses.last().unwrap();
    assert_eq!(
        progress(last),
        (
            Status::SUBOPS_WITH_FAILURES,
            None,
            Some(1),
            Some(1),
            Some(0)
        )
    );
    assert_eq!(failed_list(data), mr.sop_uid.as_bytes());
    scu.release().await.unwrap();
    app.stop().await;
}

/// Stores a deflated instance whose data set inflates past `zeros` bytes of private OB, as
/// a modality would send it (in Deflated Explicit VR LE), and checks it was accepted.
async fn store_bomb(app: &Appliance, inst: &SynthInstance, zeros: u32) {
    let deflated = dataset::ts::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    let file = dataset::bomb::deflate_bomb(inst, zeros);
    let meta = dataset::meta::read_file_meta(&mut &file[..]).unwrap();
    println!("bomb file: {} bytes", file.len());
    let mut scu = Scu::connect(app.addr, "MODALITY", "OUTPOST", &[(CT, &[deflated])], &[])
        .await
        .unwrap();
    let rsp = scu
        .store(
            &inst.sop_class,
            &inst.sop_uid,
            Some(deflated),
            &file[meta.dataset_offset as usize..],
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    scu.release().await.unwrap();
}

/// A transcode limit far below the bombs' inflated size: whatever inflates in memory is
/// refused past it, so an instance that arrives whole was streamed.
const BOMB_LIMIT: &str = "transcode_memory_limit_mb = 16";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_a_deflate_bomb_by_a_viewer_without_deflate_streams_it_in_bounded_memory() {
    // Review finding 2: a modality stored a 2 MB Deflated Explicit VR LE instance holding a
    // 2 GB private OB of zeros (the walker inflates while ingesting, and keeps nothing). A
    // viewer that proposes no deflate (nearly all of them) then opened the study: the whole
    // data set was inflated into memory to convert it, and the appliance was OOM-killed.
    // Once inflation was bounded by the transcode memory limit, the viewer got a failed
    // sub-operation instead of the instance. Inflating is the whole
    // conversion to Explicit VR LE, so it now streams: the viewer gets every byte, and the
    // process's peak RSS grows by a buffer, not by the data set.
    if !crate::query::alone_in_a_child(
        "retrieve::get_of_a_deflate_bomb_by_a_viewer_without_deflate_streams_it_in_bounded_memory",
    ) {
        return;
    }
    let inst = SynthInstance::ct(1, 1, 1, 1);
    // 256 MiB of zeros, 16 times the transcode limit below: the review's 2 GB took 12
    // minutes through a debug build, and any size past the limit shows the same thing.
    let zeros: u32 = 256 << 20;
    let head = dataset::bomb::bomb_head(&inst, zeros);
    let app = Appliance::start(&open_config(BOMB_LIMIT)).await;
    store_bomb(&app, &inst, zeros).await;

    let baseline = crate::query::reset_peak_kib();
    let mut scu = getter(&app, &[EXPLICIT_LE], &[CT]).await;
    scu.start_get(dimse::STUDY_ROOT_GET, &study_identifier(&inst))
        .await
        .unwrap();
    let mut received: u64 = 0;
    let mut differs_at = None;
    let last = loop {
        match scu
            .channel()
            .next(std::time::Duration::from_secs(120))
            .await
            .unwrap()
        {
            dimse::Incoming::Command { pc_id, command }
                if command.field == CommandField::C_STORE_RQ =>
            {
                let ts = scu
                    .channel()
                    .context(pc_id)
                    .unwrap()
                    .transfer_syntax
                    .clone();
                assert_eq!(ts.trim_end_matches('\0'), EXPLICIT_LE);
                loop {
                    let (bytes, last) = scu.channel().next_data(pc_id).await.unwrap();
                    // Compared as it arrives: the head, then nothing but zeros.
                    for (i, b) in bytes.iter().enumerate() {
                        let at = received + i as u64;
                        let want = head.get(at as usize).copied().unwrap_or(0);
                        if *b != want && differs_at.is_none() {
                            differs_at = Some(at);
                        }
                    }
                    received += bytes.len() as u64;
                    if last {
                        break;
                    }
                }
                let rsp =
                    Command::response_to(&command, CommandField::C_STORE_RSP, Status::SUCCESS);
                scu.channel().send_command(pc_id, &rsp).await.unwrap();
            }
            dimse::Incoming::Command { pc_id, command } => {
                if command.has_data_set {
                    scu.channel()
                        .read_data_set(pc_id, 1 << 20)
                        .await
                        .unwrap()
                        .unwrap();
                }
                if command.status != Some(Status::PENDING) {
                    break command;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let growth = crate::query::peak_growth_mib(baseline);
    println!(
        "C-GET of a bomb inflating to {} bytes: received {received} bytes, peak RSS grew by {growth} MiB",
        head.len() as u64 + u64::from(zeros)
    );
    assert_eq!(
        progress(&last),
        (Status::SUCCESS, None, Some(1), Some(0), Some(0)),
        "{:?}",
        last.error_comment
    );
    assert_eq!(received, head.len() as u64 + u64::from(zeros));
    assert_eq!(differs_at, None, "the inflated data set differs");
    // Holding the data set would have cost 256 MiB.
    assert!(growth < 64, "peak RSS grew by {growth} MiB");
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_of_a_deflate_bomb_to_a_receiver_without_deflate_streams_it_in_bounded_memory() {
    // Review finding 2, C-MOVE: the same 2 MB file inflating to 2 GB, moved to DCMTK's
    // storescp started without +xd (it takes no deflate, like Orthanc). The sub-operation
    // inflated the whole data set into memory to convert it. Now it streams, and storescp
    // (writing exactly what it received, +B) holds the whole Explicit VR LE data set.
    if !crate::query::alone_in_a_child(
        "retrieve::move_of_a_deflate_bomb_to_a_receiver_without_deflate_streams_it_in_bounded_memory",
    ) {
        return;
    }
    let inst = SynthInstance::ct(1, 1, 1, 1);
    // 256 MiB of zeros, 16 times the transcode limit below: the review's 2 GB took 12
    // minutes through a debug build, and any size past the limit shows the same thing.
    let zeros: u32 = 256 << 20;
    let head = dataset::bomb::bomb_head(&inst, zeros);
    let out = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut storescp = std::process::Command::new("/usr/bin/storescp")
        .args(["--aetitle", "DEST", "+B", "-od"])
        .arg(out.path())
        .arg(port.to_string())
        .spawn()
        .expect("DCMTK's storescp runs");
    crate::support::serves_within(
        format!("127.0.0.1:{port}").parse().unwrap(),
        std::time::Duration::from_secs(10),
    )
    .await;
    let app = Appliance::start(&format!(
        "{}\n{}",
        open_config(BOMB_LIMIT),
        remote("DEST", port)
    ))
    .await;
    store_bomb(&app, &inst, zeros).await;

    let baseline = crate::query::reset_peak_kib();
    let mut scu = mover(&app).await;
    scu.start_move(dimse::STUDY_ROOT_MOVE, "DEST", &study_identifier(&inst))
        .await
        .unwrap();
    // Waited for longer than the kit's timeout: the bomb passes through an unoptimised build.
    let last = loop {
        match scu
            .channel()
            .next(std::time::Duration::from_secs(600))
            .await
            .unwrap()
        {
            dimse::Incoming::Command { pc_id, command } => {
                if command.has_data_set {
                    scu.channel()
                        .read_data_set(pc_id, 1 << 20)
                        .await
                        .unwrap()
                        .unwrap();
                }
                if command.status != Some(Status::PENDING) {
                    break command;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let growth = crate::query::peak_growth_mib(baseline);
    scu.release().await.unwrap();
    app.stop().await;
    let _ = storescp.kill();
    let _ = storescp.wait();
    println!("C-MOVE of a bomb to storescp: peak RSS grew by {growth} MiB");
    assert_eq!(
        (last.status, last.completed, last.failed),
        (Some(Status::SUCCESS), Some(1), Some(0)),
        "{:?}",
        last.error_comment
    );
    // Holding the data set would have cost 256 MiB.
    assert!(growth < 64, "peak RSS grew by {growth} MiB");
    // The file storescp wrote: its meta says Explicit VR LE, then the inflated data set.
    let written: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let mut reader = std::io::BufReader::new(std::fs::File::open(&written[0]).unwrap());
    let meta = dataset::meta::read_file_meta(&mut reader).unwrap();
    assert_eq!(meta.transfer_syntax, EXPLICIT_LE);
    let mut at: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            let p = at + i as u64;
            let want = head.get(p as usize).copied().unwrap_or(0);
            assert_eq!(*b, want, "the data set differs at byte {p}");
        }
        at += n as u64;
    }
    assert_eq!(at, head.len() as u64 + u64::from(zeros));
}
