//! PS3.5 7.1 at ingest: a data set whose tags repeat, or break ascending order more than a
//! few times, is refused with 0xC001 while it streams, in memory bounded by the PDU size; an
//! isolated misplaced element is accepted.

use std::io::Write;

use dataset::synth::SynthInstance;
use dataset::{Encoding, Tag, Vr, tags};
use dimse::{Command, CommandField, Status};
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};

use crate::support::{identifier, instance_count, open_config, stored, tmp_files};

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
/// Set in the child process a memory test re-runs itself in, so that its peak RSS is its own
/// and not that of the tests running beside it.
const ALONE: &str = "OUTPOST_IT_ALONE";
/// How many zero-length Patient Name elements the attack sends: the review's 80 MB.
const REPEATS: usize = 10_000_000;
/// Peak RSS allowed for the whole test process (appliance and client). Measured (debug
/// build) at 24 MiB after the fix; before it, 1.7 GB plain, and 1.8 GB deflated when the
/// client gave up waiting after 30 s.
const PEAK_RSS_LIMIT: u64 = 96 << 20;

async fn modality(app: &Appliance, ts: &str) -> Scu {
    Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(CT, &[ts]), (dimse::VERIFICATION, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap()
}

/// Runs `body` in a child process holding only this test (see [`ALONE`]), and checks there
/// that it ran and passed.
fn alone(name: &str, body: impl FnOnce()) {
    if std::env::var_os(ALONE).is_some() {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "the isolated run failed");
    assert!(
        stdout.contains("1 passed"),
        "the isolated run did not run {name}"
    );
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Streams the UIDs and then [`REPEATS`] zero-length Patient Name elements as one C-STORE,
/// generated fragment by fragment so that the client holds one fragment at a time.
async fn send_repeats(scu: &mut Scu, pc: u8, sop_uid: &str, deflate: bool) -> Command {
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let start = identifier(
        Encoding::EXPLICIT_LE,
        &[
            (tags::SOP_CLASS_UID, Vr::UI, CT.as_bytes()),
            (tags::SOP_INSTANCE_UID, Vr::UI, sop_uid.as_bytes()),
            (tags::STUDY_INSTANCE_UID, Vr::UI, inst.study_uid.as_bytes()),
            (
                tags::SERIES_INSTANCE_UID,
                Vr::UI,
                inst.series_uid.as_bytes(),
            ),
        ],
    );
    let mut rq = Command::new(CommandField::C_STORE_RQ);
    rq.message_id = Some(scu.next_id());
    rq.affected_sop_class_uid = Some(CT.to_string());
    rq.affected_sop_instance_uid = Some(sop_uid.to_string());
    rq.priority = Some(0);
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    let max = scu.channel().max_fragment() / 8 * 8;
    let names = b"\x10\x00\x10\x00PN\x00\x00".repeat(max / 8);
    let mut z = deflate.then(|| flate2::write::DeflateEncoder::new(Vec::new(), Default::default()));
    let mut pending = Vec::new();
    let mut wire = 0usize;
    let mut feed = |bytes: &[u8], pending: &mut Vec<u8>| match &mut z {
        Some(z) => {
            z.write_all(bytes).unwrap();
            pending.append(z.get_mut());
        }
        None => pending.extend_from_slice(bytes),
    };
    feed(&start, &mut pending);
    let mut left = REPEATS;
    while left > 0 {
        let n = left.min(max / 8);
        left -= n;
        feed(&names[..n * 8], &mut pending);
        while pending.len() >= max {
            let rest = pending.split_off(max);
            wire += max;
            scu.channel()
                .send_data_fragment(pc, std::mem::replace(&mut pending, rest), false)
                .await
                .unwrap();
        }
    }
    if let Some(z) = z.take() {
        pending.extend(z.finish().unwrap());
    }
    while pending.len() > max {
        let rest = pending.split_off(max);
        wire += max;
        scu.channel()
            .send_data_fragment(pc, std::mem::replace(&mut pending, rest), false)
            .await
            .unwrap();
    }
    wire += pending.len();
    scu.channel()
        .send_data_fragment(pc, pending, true)
        .await
        .unwrap();
    println!("sent {wire} bytes on the wire (deflated: {deflate})");
    scu.response().await.unwrap()
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn repeats_are_refused_in_bounded_memory(deflate: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = Appliance::start(&open_config("")).await;
        let ts = if deflate { DEFLATED } else { EXPLICIT_LE };
        let mut scu = modality(&app, ts).await;
        let (pc, _) = scu.context(CT, Some(ts)).expect("CT context accepted");
        let bad = SynthInstance::ct(1, 1, 1, 1);
        let rsp = send_repeats(&mut scu, pc, &bad.sop_uid, deflate).await;
        assert_eq!(rsp.status, Some(Status::CANNOT_PARSE), "{rsp:?}");
        let comment = rsp.error_comment.clone().unwrap_or_default();
        assert!(
            comment.starts_with("element (0010,0010) repeats at byte "),
            "{comment:?}"
        );
        // The refused instance left nothing behind.
        assert_eq!(tmp_files(&app), Vec::<std::path::PathBuf>::new());
        // The association goes on: the next C-STORE on it is stored.
        let good = SynthInstance::ct(1, 1, 1, 2);
        let mut data = good.dataset(Encoding::EXPLICIT_LE);
        if deflate {
            data = deflated(&data);
        }
        let rsp = scu.store(CT, &good.sop_uid, Some(ts), &data).await.unwrap();
        assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
        scu.release().await.unwrap();
        assert_eq!(instance_count(&app), 1);
        assert_eq!(stored(&app, &bad.sop_uid), None);
        assert!(stored(&app, &good.sop_uid).is_some());
        app.stop().await;
    });
    let peak = peak_rss();
    println!("peak RSS {} MiB (deflated: {deflate})", peak >> 20);
    assert!(
        peak < PEAK_RSS_LIMIT,
        "peak RSS {} MiB exceeds {} MiB",
        peak >> 20,
        PEAK_RSS_LIMIT >> 20
    );
}

#[test]
fn ten_million_repeated_patient_names_are_refused_with_c001_in_bounded_memory() {
    // The review (finding 4) sent the UIDs followed by 10 million zero-length PatientName
    // elements, 80 MB, as one C-STORE: the walker kept every occurrence, the process grew to
    // 1.7 GB, and the instance was answered 0x0000 and stored. Any AE allowed to store could
    // take the appliance down, breaking "memory per association follows the PDU size".
    alone(
        "tag_order::ten_million_repeated_patient_names_are_refused_with_c001_in_bounded_memory",
        || repeats_are_refused_in_bounded_memory(false),
    );
}

#[test]
fn ten_million_repeated_patient_names_deflated_are_refused_with_c001_in_bounded_memory() {
    // The same data set in Deflated Explicit VR Little Endian is a few hundred KB on the wire
    // and took the process to 7.3 GB: the refusal must come while inflating, not after.
    alone(
        "tag_order::ten_million_repeated_patient_names_deflated_are_refused_with_c001_in_bounded_memory",
        || repeats_are_refused_in_bounded_memory(true),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_top_level_tag_is_refused_and_nothing_is_stored() {
    // A data set with Patient ID twice was stored and indexed under whichever occurrence the
    // index happened to read; PS3.5 7.1 allows each tag once, so it is refused outright.
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app, EXPLICIT_LE).await;
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.extra
        .push((tags::PATIENT_ID, Vr::LO, b"SOMEONE-ELSE".to_vec()));
    let rsp = scu
        .store(
            CT,
            &inst.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::CANNOT_PARSE));
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.starts_with("element (0010,0020) repeats at byte ")),
        "{:?}",
        rsp.error_comment
    );
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    assert_eq!(tmp_files(&app), Vec::<std::path::PathBuf>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_misplaced_element_is_accepted_as_sent() {
    // Real modalities occasionally write one element out of place (here a private element
    // after Pixel Data); refusing their images would stop an exam for a cosmetic fault.
    let app = Appliance::start(&open_config("")).await;
    let mut scu = modality(&app, EXPLICIT_LE).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let mut data = inst.dataset(Encoding::EXPLICIT_LE);
    data.extend(identifier(
        Encoding::EXPLICIT_LE,
        &[(Tag::new(0x0009, 0x0010), Vr::LO, b"LATE CREATOR")],
    ));
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    scu.release().await.unwrap();
    let (_, bytes) = stored(&app, &inst.sop_uid).expect("stored");
    assert!(bytes == data, "the archive changed the data set");
    app.stop().await;
}
