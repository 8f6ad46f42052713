//! C-FIND matching and retrieval resolution over a real index (PS3.4 C.2.2.2, C.4).

use dataset::charset::Charset;
use dataset::encode::trim_padding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use dataset::{Element, Tag, Vr, tags};
use store::query::{Found, Identifier, Level, Model, QueryError};
use store::{Outcome, Store};

use crate::support::{config, store_instance};

const ROOT: &str = "1.2.826.0.1.3680043.10.1234";
const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const LATIN1_NAME: &[u8] = b"M\xdcLLER^HANS";
const JIS_CHARSET: &[u8] = b"\\ISO 2022 IR 87";
const JIS_NAME: &[u8] = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B";
const CAP: usize = 1000;

/// The archive's studies: patient, study, date, time, and the series as (number, modality,
/// instances).
type StudyRow = (
    u32,
    u32,
    &'static str,
    &'static str,
    &'static [(u32, &'static str, u32)],
);
const STUDIES: &[StudyRow] = &[
    (1, 1, "20260105", "083000", &[(1, "CT", 2), (2, "MR", 1)]),
    (1, 2, "20260120", "143000", &[(1, "CT", 1)]),
    (2, 1, "20251231", "101500", &[(1, "CT", 1)]),
    // No study date or time.
    (2, 2, "", "", &[(1, "CT", 1)]),
    (3, 1, "20260210", "120000", &[(1, "CT", 1)]),
    (4, 1, "20260301", "235959", &[(1, "MR", 1)]),
    (5, 1, "20260115", "000000", &[(1, "CT", 1)]),
    (6, 1, "20250601", "101500", &[(1, "CT", 1)]),
    (7, 1, "20250602", "101500", &[(1, "CT", 1)]),
];
const STUDY_COUNT: usize = 9;
const PATIENT_COUNT: usize = 7;

/// The patients: 1 and 2 plain ASCII, 3 Latin-1, 4 UTF-8, 5 ISO 2022 Japanese, 6 and 7 the
/// same Patient ID from two issuers.
fn patient(x: &mut SynthInstance, p: u32) {
    match p {
        1 => x.patient_name = b"DOE^JOHN".to_vec(),
        2 => x.patient_name = b"DOE^JANE".to_vec(),
        3 => x.patient_name = LATIN1_NAME.to_vec(),
        4 => {
            x.charset = Some(b"ISO_IR 192".to_vec());
            x.patient_name = "GARCÍA^JOSÉ".as_bytes().to_vec();
        }
        5 => {
            x.charset = Some(JIS_CHARSET.to_vec());
            x.patient_name = JIS_NAME.to_vec();
        }
        6 | 7 => {
            x.patient_name = if p == 6 {
                b"SMITH^ANNA".to_vec()
            } else {
                b"SMITH^ANNE".to_vec()
            };
            x.patient_id = "SHARED".into();
            x.issuer = Some(if p == 6 { "HOSP_A" } else { "HOSP_B" }.into());
        }
        _ => unreachable!(),
    }
}

fn fixtures() -> Vec<SynthInstance> {
    let mut out = Vec::new();
    for &(p, s, date, time, series) in STUDIES {
        for &(r, modality, n) in series {
            for i in 1..=n {
                let mut x = SynthInstance::ct(p, s, r, i);
                patient(&mut x, p);
                x.study_date = date.into();
                x.study_time = time.into();
                x.modality = modality.into();
                if modality == "MR" {
                    x.sop_class = MR_IMAGE_STORAGE.into();
                }
                out.push(x);
            }
        }
    }
    out
}

struct Archive {
    _dir: tempfile::TempDir,
    store: Store,
}

async fn archive() -> Archive {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let all = fixtures();
    assert_eq!(all.len(), 11);
    // One at a time, so that series (and modalities) are filed in table order.
    for x in &all {
        assert_eq!(store_instance(&store, x).await, Outcome::Stored);
    }
    assert_eq!(store.instance_count().unwrap(), 11);
    Archive { _dir: dir, store }
}

fn study(p: u32, s: u32) -> String {
    format!("{ROOT}.{p}.{s}")
}

fn series(p: u32, s: u32, r: u32) -> String {
    format!("{ROOT}.{p}.{s}.{r}")
}

fn sop(p: u32, s: u32, r: u32, i: u32) -> String {
    format!("{ROOT}.{p}.{s}.{r}.{i}")
}

fn el(tag: Tag, vr: Vr, value: impl AsRef<[u8]>) -> Element {
    Element {
        tag,
        vr,
        value: value.as_ref().to_vec(),
    }
}

/// An identifier in the default character repertoire.
fn ident(level: Level, keys: Vec<Element>) -> Identifier {
    Identifier {
        level,
        charset: Charset::Default,
        keys,
    }
}

fn utf8(level: Level, keys: Vec<Element>) -> Identifier {
    Identifier {
        level,
        charset: Charset::from_raw(b"ISO_IR 192"),
        keys,
    }
}

/// A stored text value as it went into the file: padded to even length with a space.
fn padded(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

fn sorted<S: ToString>(v: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The raw value of a response key; panics if the response lacks the key.
fn raw(f: &Found, tag: Tag) -> &[u8] {
    &f.elements
        .iter()
        .find(|e| e.tag == tag)
        .unwrap_or_else(|| panic!("response lacks {tag}: {f:?}"))
        .value
}

/// A response key's value as trimmed text.
fn text(f: &Found, tag: Tag) -> String {
    String::from_utf8_lossy(trim_padding(raw(f, tag))).into_owned()
}

/// One key's trimmed values over all responses, sorted.
fn column(found: &[Found], tag: Tag) -> Vec<String> {
    sorted(found.iter().map(|f| text(f, tag)))
}

fn run(store: &Store, model: Model, q: &Identifier) -> Vec<Found> {
    store
        .find(model, q, CAP)
        .unwrap_or_else(|e| panic!("query {q:?} refused: {e}"))
}

/// Study Root STUDY level: the Study Instance UIDs matching `keys` (StudyInstanceUID is added
/// as a return key when the keys lack it), sorted.
fn studies_in(store: &Store, charset: Charset, mut keys: Vec<Element>) -> Vec<String> {
    if !keys.iter().any(|k| k.tag == tags::STUDY_INSTANCE_UID) {
        keys.push(el(tags::STUDY_INSTANCE_UID, Vr::UI, b""));
    }
    let q = Identifier {
        level: Level::Study,
        charset,
        keys,
    };
    column(&run(store, Model::StudyRoot, &q), tags::STUDY_INSTANCE_UID)
}

fn studies(store: &Store, keys: Vec<Element>) -> Vec<String> {
    studies_in(store, Charset::Default, keys)
}

/// Patient Root PATIENT level: the Patient IDs matching `keys`, sorted.
fn patient_ids(store: &Store, mut keys: Vec<Element>) -> Vec<String> {
    if !keys.iter().any(|k| k.tag == tags::PATIENT_ID) {
        keys.push(el(tags::PATIENT_ID, Vr::LO, b""));
    }
    column(
        &run(store, Model::PatientRoot, &ident(Level::Patient, keys)),
        tags::PATIENT_ID,
    )
}

fn pn(v: impl AsRef<[u8]>) -> Element {
    el(tags::PATIENT_NAME, Vr::PN, v)
}

fn pid(v: &str) -> Element {
    el(tags::PATIENT_ID, Vr::LO, v)
}

fn study_date(v: &str) -> Element {
    el(tags::STUDY_DATE, Vr::DA, v)
}

fn study_time(v: &str) -> Element {
    el(tags::STUDY_TIME, Vr::TM, v)
}

fn study_uid_key(v: &str) -> Element {
    el(tags::STUDY_INSTANCE_UID, Vr::UI, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_value_matching() {
    let a = archive().await;
    let s = &a.store;
    assert_eq!(
        studies(s, vec![pid("PID00002")]),
        sorted([study(2, 1), study(2, 2)])
    );
    assert_eq!(
        studies(s, vec![el(tags::ACCESSION_NUMBER, Vr::SH, "ACC1002")]),
        sorted([study(1, 2)])
    );
    assert_eq!(
        studies(s, vec![study_uid_key(&study(3, 1))]),
        sorted([study(3, 1)])
    );
    assert_eq!(
        studies(s, vec![study_uid_key("1.2.3.999")]),
        Vec::<String>::new()
    );
    // Person names match case-insensitively, at any level.
    assert_eq!(
        studies(s, vec![pn("doe^john")]),
        sorted([study(1, 1), study(1, 2)])
    );
    assert_eq!(
        studies(s, vec![pn("DOE^JOHN")]),
        sorted([study(1, 1), study(1, 2)])
    );
    assert_eq!(patient_ids(s, vec![pn("Doe^Jane")]), sorted(["PID00002"]));
    assert_eq!(patient_ids(s, vec![pn("DOE")]), Vec::<String>::new());
    // Other text is case-sensitive.
    assert_eq!(studies(s, vec![pid("pid00002")]), Vec::<String>::new());
    assert_eq!(
        studies(s, vec![el(tags::ACCESSION_NUMBER, Vr::SH, "acc1002")]),
        Vec::<String>::new()
    );
    // Several keys: all must match.
    assert_eq!(
        studies(
            s,
            vec![
                pid("PID00001"),
                el(tags::ACCESSION_NUMBER, Vr::SH, "ACC1002")
            ]
        ),
        sorted([study(1, 2)])
    );
    assert_eq!(
        studies(
            s,
            vec![
                pid("PID00001"),
                el(tags::ACCESSION_NUMBER, Vr::SH, "ACC2001")
            ]
        ),
        Vec::<String>::new()
    );
    // At SERIES level, Modality (CS) is single-value matched.
    let q = ident(
        Level::Series,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::MODALITY, Vr::CS, "MR"),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, ""),
        ],
    );
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(
        column(&found, tags::SERIES_INSTANCE_UID),
        sorted([series(1, 1, 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn universal_matching_returns_values_in_request_order() {
    let a = archive().await;
    let s = &a.store;
    let keys = vec![
        el(tags::ACCESSION_NUMBER, Vr::SH, ""),
        pn(""),
        study_uid_key(&study(1, 1)),
        study_date(""),
        study_time(""),
        el(tags::MODALITIES_IN_STUDY, Vr::CS, ""),
        // Neither the study nor its patient has these.
        el(tags::PATIENT_COMMENTS, Vr::LT, ""),
        // A series attribute, which the index does not hold for studies: not answered.
        el(tags::SERIES_DESCRIPTION, Vr::LO, ""),
    ];
    let found = run(s, Model::StudyRoot, &ident(Level::Study, keys.clone()));
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    assert_eq!(f.charset, b"ISO_IR 100");
    let order: Vec<Tag> = f.elements.iter().map(|e| e.tag).collect();
    let asked: Vec<Tag> = keys[..keys.len() - 1].iter().map(|e| e.tag).collect();
    assert_eq!(order, asked);
    assert_eq!(raw(f, tags::ACCESSION_NUMBER), padded(b"ACC1001"));
    assert_eq!(raw(f, tags::PATIENT_NAME), b"DOE^JOHN");
    assert_eq!(text(f, tags::STUDY_INSTANCE_UID), study(1, 1));
    assert_eq!(raw(f, tags::STUDY_DATE), b"20260105");
    assert_eq!(raw(f, tags::STUDY_TIME), b"083000");
    assert_eq!(raw(f, tags::MODALITIES_IN_STUDY), b"CT\\MR");
    assert_eq!(raw(f, tags::PATIENT_COMMENTS), b"");
    let vrs: Vec<Vr> = f.elements.iter().map(|e| e.vr).collect();
    assert_eq!(
        vrs,
        [Vr::SH, Vr::PN, Vr::UI, Vr::DA, Vr::TM, Vr::CS, Vr::LT]
    );

    // Empty keys match every study, including one that lacks a value.
    let found = run(
        s,
        Model::StudyRoot,
        &ident(
            Level::Study,
            vec![study_uid_key(""), study_date(""), study_time("")],
        ),
    );
    assert_eq!(found.len(), STUDY_COUNT);
    let undated = found
        .iter()
        .find(|f| text(f, tags::STUDY_INSTANCE_UID) == study(2, 2))
        .unwrap();
    assert_eq!(raw(undated, tags::STUDY_DATE), b"");
    assert_eq!(raw(undated, tags::STUDY_TIME), b"");
    assert_eq!(
        column(&found, tags::STUDY_DATE),
        sorted([
            "", "20250601", "20250602", "20251231", "20260105", "20260115", "20260120", "20260210",
            "20260301"
        ])
    );
    assert_eq!(patient_ids(s, vec![pn("")]).len(), PATIENT_COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_matching_on_text() {
    let a = archive().await;
    let s = &a.store;
    // PN: case-insensitive, `*` any run, `?` one character.
    assert_eq!(
        studies(s, vec![pn("DOE^J*")]),
        sorted([study(1, 1), study(1, 2), study(2, 1), study(2, 2)])
    );
    assert_eq!(
        studies(s, vec![pn("do?^ja*")]),
        sorted([study(2, 1), study(2, 2)])
    );
    assert_eq!(
        studies(s, vec![pn("*JOHN")]),
        sorted([study(1, 1), study(1, 2)])
    );
    assert_eq!(
        patient_ids(s, vec![pn("*ANN?")]),
        sorted(["SHARED", "SHARED"])
    );
    assert_eq!(patient_ids(s, vec![pn("DOE^JOH?")]), sorted(["PID00001"]));
    assert_eq!(patient_ids(s, vec![pn("DOE^JOHN?")]), Vec::<String>::new());
    assert_eq!(
        patient_ids(s, vec![pn("S?ITH*")]),
        sorted(["SHARED", "SHARED"])
    );
    // LO: case-sensitive.
    assert_eq!(
        patient_ids(s, vec![pid("PID0000?")]),
        sorted(["PID00001", "PID00002", "PID00003", "PID00004", "PID00005"])
    );
    assert_eq!(patient_ids(s, vec![pid("pid*")]), Vec::<String>::new());
    assert_eq!(
        patient_ids(s, vec![pid("SH*ED")]),
        sorted(["SHARED", "SHARED"])
    );
    // SH.
    assert_eq!(
        studies(s, vec![el(tags::ACCESSION_NUMBER, Vr::SH, "ACC1*")]),
        sorted([study(1, 1), study(1, 2)])
    );
    assert_eq!(
        studies(s, vec![el(tags::ACCESSION_NUMBER, Vr::SH, "ACC?001")]),
        sorted([
            study(1, 1),
            study(2, 1),
            study(3, 1),
            study(4, 1),
            study(5, 1),
            study(6, 1),
            study(7, 1)
        ])
    );
    // CS, at SERIES level.
    let series_with = |modality: &str| {
        let q = ident(
            Level::Series,
            vec![
                study_uid_key(&study(1, 1)),
                el(tags::MODALITY, Vr::CS, modality),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, ""),
            ],
        );
        column(&run(s, Model::StudyRoot, &q), tags::SERIES_INSTANCE_UID)
    };
    assert_eq!(series_with("M?"), sorted([series(1, 1, 2)]));
    assert_eq!(series_with("*T"), sorted([series(1, 1, 1)]));
    assert_eq!(series_with("m?"), Vec::<String>::new());
    // A lone `*` is universal matching (C.2.2.2.4): it also matches entities without a value.
    assert_eq!(
        patient_ids(
            s,
            vec![pid("PID0000*"), el(tags::ISSUER_OF_PATIENT_ID, Vr::LO, "*")]
        ),
        sorted(["PID00001", "PID00002", "PID00003", "PID00004", "PID00005"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wildcards_on_uids_or_dates() {
    let a = archive().await;
    let s = &a.store;
    let none = Vec::<String>::new();
    assert_eq!(
        studies(s, vec![study_uid_key(&format!("{ROOT}.1.*"))]),
        none
    );
    assert_eq!(
        studies(s, vec![study_uid_key(&format!("{ROOT}.1.?"))]),
        none
    );
    assert_eq!(studies(s, vec![study_uid_key("*")]), none);
    let q = ident(
        Level::Series,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, format!("{ROOT}.1.1.*")),
        ],
    );
    assert_eq!(run(s, Model::StudyRoot, &q), Vec::new());
    // A date is never a pattern, whichever index narrows the candidates.
    assert_eq!(studies(s, vec![study_date("202601*")]), none);
    assert_eq!(studies(s, vec![study_date("2026010?")]), none);
    assert_eq!(
        studies(s, vec![pid("PID00001"), study_date("202601*")]),
        none
    );
    assert_eq!(
        studies(s, vec![pid("PID00001"), study_date("2026010?")]),
        none
    );
    assert_eq!(
        studies(
            s,
            vec![
                el(tags::ACCESSION_NUMBER, Vr::SH, "ACC1001"),
                study_date("2026*")
            ]
        ),
        none
    );
    assert_eq!(studies(s, vec![pid("PID00001"), study_time("08*")]), none);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_uid_matching() {
    let a = archive().await;
    let s = &a.store;
    let list = format!("{}\\{}\\1.2.3.999", study(1, 2), study(4, 1));
    assert_eq!(
        studies(s, vec![study_uid_key(&list)]),
        sorted([study(1, 2), study(4, 1)])
    );
    // Other keys still apply to the listed studies.
    assert_eq!(
        studies(
            s,
            vec![
                study_uid_key(&list),
                el(tags::MODALITIES_IN_STUDY, Vr::CS, "MR")
            ]
        ),
        sorted([study(4, 1)])
    );
    // A UID listed twice is still one study.
    let twice = format!("{}\\{}", study(3, 1), study(3, 1));
    assert_eq!(
        studies(s, vec![study_uid_key(&twice)]),
        sorted([study(3, 1)])
    );

    // SERIES and IMAGE levels.
    let q = ident(
        Level::Series,
        vec![
            study_uid_key(&study(1, 1)),
            el(
                tags::SERIES_INSTANCE_UID,
                Vr::UI,
                format!("{}\\{}", series(1, 1, 2), series(1, 2, 1)),
            ),
        ],
    );
    // The series of another study is not in this study.
    assert_eq!(
        column(&run(s, Model::StudyRoot, &q), tags::SERIES_INSTANCE_UID),
        sorted([series(1, 1, 2)])
    );
    let q = ident(
        Level::Image,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
            el(
                tags::SOP_INSTANCE_UID,
                Vr::UI,
                format!(
                    "{}\\{}\\{}",
                    sop(1, 1, 1, 2),
                    sop(1, 1, 2, 1),
                    sop(1, 1, 1, 2)
                ),
            ),
            el(tags::INSTANCE_NUMBER, Vr::IS, ""),
        ],
    );
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(
        column(&found, tags::SOP_INSTANCE_UID),
        sorted([sop(1, 1, 1, 2)])
    );
    assert_eq!(column(&found, tags::INSTANCE_NUMBER), sorted(["2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_and_time_range_matching() {
    let a = archive().await;
    let s = &a.store;
    assert_eq!(
        studies(s, vec![study_date("20260101-20260131")]),
        sorted([study(1, 1), study(1, 2), study(5, 1)])
    );
    // Inclusive bounds.
    assert_eq!(
        studies(s, vec![study_date("20260105-20260115")]),
        sorted([study(1, 1), study(5, 1)])
    );
    // Open ranges; a study without a date is in none of them.
    assert_eq!(
        studies(s, vec![study_date("-20260105")]),
        sorted([study(1, 1), study(2, 1), study(6, 1), study(7, 1)])
    );
    assert_eq!(
        studies(s, vec![study_date("20260210-")]),
        sorted([study(3, 1), study(4, 1)])
    );
    assert_eq!(
        studies(s, vec![study_date("20260120")]),
        sorted([study(1, 2)])
    );
    assert_eq!(
        studies(s, vec![study_date("20260121")]),
        Vec::<String>::new()
    );
    // An inverted range matches nothing.
    assert_eq!(
        studies(s, vec![study_date("20260131-20260101")]),
        Vec::<String>::new()
    );
    // The same ranges when another index picks the candidates.
    assert_eq!(
        studies(s, vec![pid("PID00001"), study_date("-20260110")]),
        sorted([study(1, 1)])
    );
    assert_eq!(
        studies(s, vec![pid("PID00002"), study_date("20250101-")]),
        sorted([study(2, 1)])
    );

    // Times: a value covers the range its precision implies.
    assert_eq!(
        studies(s, vec![study_time("0800-1200")]),
        sorted([
            study(1, 1),
            study(2, 1),
            study(3, 1),
            study(6, 1),
            study(7, 1)
        ])
    );
    assert_eq!(
        studies(s, vec![study_time("-0830")]),
        sorted([study(1, 1), study(5, 1)])
    );
    assert_eq!(
        studies(s, vec![study_time("-082959")]),
        sorted([study(5, 1)])
    );
    assert_eq!(
        studies(s, vec![study_time("1430-")]),
        sorted([study(1, 2), study(4, 1)])
    );
    assert_eq!(
        studies(s, vec![study_time("143001-")]),
        sorted([study(4, 1)])
    );
    assert_eq!(
        studies(s, vec![study_time("1015")]),
        sorted([study(2, 1), study(6, 1), study(7, 1)])
    );
    assert_eq!(
        studies(s, vec![study_time("101500")]),
        sorted([study(2, 1), study(6, 1), study(7, 1)])
    );
    assert_eq!(studies(s, vec![study_time("1016")]), Vec::<String>::new());
    // Date and time ranges are independent keys.
    assert_eq!(
        studies(
            s,
            vec![study_date("20260101-20260131"), study_time("0800-1200")]
        ),
        sorted([study(1, 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modalities_in_study_and_counts() {
    let a = archive().await;
    let s = &a.store;
    let modalities = |v: &str| studies(s, vec![el(tags::MODALITIES_IN_STUDY, Vr::CS, v)]);
    assert_eq!(modalities("MR"), sorted([study(1, 1), study(4, 1)]));
    assert_eq!(modalities("MR\\US"), sorted([study(1, 1), study(4, 1)]));
    assert_eq!(modalities("US"), Vec::<String>::new());
    assert_eq!(modalities("CT").len(), STUDY_COUNT - 1);

    let q = ident(
        Level::Study,
        vec![
            study_uid_key(""),
            el(tags::MODALITIES_IN_STUDY, Vr::CS, "MR"),
            el(tags::NUMBER_OF_STUDY_RELATED_SERIES, Vr::IS, ""),
            el(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, Vr::IS, ""),
            el(tags::SOP_CLASSES_IN_STUDY, Vr::UI, ""),
        ],
    );
    let found = run(s, Model::StudyRoot, &q);
    let by_uid = |uid: String| {
        found
            .iter()
            .find(|f| text(f, tags::STUDY_INSTANCE_UID) == uid)
            .unwrap()
    };
    let mixed = by_uid(study(1, 1));
    let mut listed: Vec<&[u8]> = raw(mixed, tags::MODALITIES_IN_STUDY)
        .split(|b| *b == b'\\')
        .collect();
    listed.sort();
    assert_eq!(listed, [&b"CT"[..], b"MR"]);
    assert_eq!(raw(mixed, tags::NUMBER_OF_STUDY_RELATED_SERIES), b"2");
    assert_eq!(raw(mixed, tags::NUMBER_OF_STUDY_RELATED_INSTANCES), b"3");
    let mut classes: Vec<&[u8]> = raw(mixed, tags::SOP_CLASSES_IN_STUDY)
        .split(|b| *b == b'\\')
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        [CT_IMAGE_STORAGE.as_bytes(), MR_IMAGE_STORAGE.as_bytes()]
    );
    let mr_only = by_uid(study(4, 1));
    assert_eq!(raw(mr_only, tags::MODALITIES_IN_STUDY), b"MR");
    assert_eq!(raw(mr_only, tags::NUMBER_OF_STUDY_RELATED_SERIES), b"1");
    assert_eq!(raw(mr_only, tags::NUMBER_OF_STUDY_RELATED_INSTANCES), b"1");

    // Patient counts.
    let q = ident(
        Level::Patient,
        vec![
            pid("PID0000?"),
            el(tags::NUMBER_OF_PATIENT_RELATED_STUDIES, Vr::IS, ""),
            el(tags::NUMBER_OF_PATIENT_RELATED_SERIES, Vr::IS, ""),
            el(tags::NUMBER_OF_PATIENT_RELATED_INSTANCES, Vr::IS, ""),
        ],
    );
    let found = run(s, Model::PatientRoot, &q);
    let counts: Vec<(String, String, String, String)> = {
        let mut v: Vec<_> = found
            .iter()
            .map(|f| {
                (
                    text(f, tags::PATIENT_ID),
                    text(f, tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
                    text(f, tags::NUMBER_OF_PATIENT_RELATED_SERIES),
                    text(f, tags::NUMBER_OF_PATIENT_RELATED_INSTANCES),
                )
            })
            .collect();
        v.sort();
        v
    };
    let row = |id: &str, st: &str, se: &str, i: &str| {
        (
            id.to_string(),
            st.to_string(),
            se.to_string(),
            i.to_string(),
        )
    };
    assert_eq!(
        counts,
        [
            row("PID00001", "2", "3", "4"),
            row("PID00002", "2", "2", "2"),
            row("PID00003", "1", "1", "1"),
            row("PID00004", "1", "1", "1"),
            row("PID00005", "1", "1", "1"),
        ]
    );

    // Series counts.
    let q = ident(
        Level::Series,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, ""),
            el(tags::MODALITY, Vr::CS, ""),
            el(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, Vr::IS, ""),
        ],
    );
    let found = run(s, Model::StudyRoot, &q);
    let mut rows: Vec<(String, String, String)> = found
        .iter()
        .map(|f| {
            (
                text(f, tags::SERIES_INSTANCE_UID),
                text(f, tags::MODALITY),
                text(f, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (series(1, 1, 1), "CT".to_string(), "2".to_string()),
            (series(1, 1, 2), "MR".to_string(), "1".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchical_keys_are_required() {
    let a = archive().await;
    let s = &a.store;
    let missing = |model: Model, q: Identifier, level: &str, name: &str, tag: Tag| match s
        .find(model, &q, CAP)
    {
        Err(QueryError::MissingUniqueKey {
            level: l,
            name: n,
            tag: t,
        }) => {
            assert_eq!((l, n, t), (level, name, tag), "{q:?}");
        }
        other => panic!("{q:?}: expected MissingUniqueKey, got {other:?}"),
    };
    // Patient Root STUDY level names the patient, with one value.
    missing(
        Model::PatientRoot,
        ident(Level::Study, vec![study_uid_key("")]),
        "STUDY",
        "PatientID",
        tags::PATIENT_ID,
    );
    missing(
        Model::PatientRoot,
        ident(Level::Study, vec![pid("PID*"), study_uid_key("")]),
        "STUDY",
        "PatientID",
        tags::PATIENT_ID,
    );
    missing(
        Model::PatientRoot,
        ident(Level::Study, vec![pid(""), study_uid_key("")]),
        "STUDY",
        "PatientID",
        tags::PATIENT_ID,
    );
    // Study Root SERIES level names the study.
    missing(
        Model::StudyRoot,
        ident(
            Level::Series,
            vec![el(tags::SERIES_INSTANCE_UID, Vr::UI, "")],
        ),
        "SERIES",
        "StudyInstanceUID",
        tags::STUDY_INSTANCE_UID,
    );
    let two = format!("{}\\{}", study(1, 1), study(1, 2));
    missing(
        Model::StudyRoot,
        ident(Level::Series, vec![study_uid_key(&two)]),
        "SERIES",
        "StudyInstanceUID",
        tags::STUDY_INSTANCE_UID,
    );
    // IMAGE level names the series too; Patient Root also the patient.
    missing(
        Model::StudyRoot,
        ident(Level::Image, vec![study_uid_key(&study(1, 1))]),
        "IMAGE",
        "SeriesInstanceUID",
        tags::SERIES_INSTANCE_UID,
    );
    missing(
        Model::PatientRoot,
        ident(
            Level::Image,
            vec![
                study_uid_key(&study(1, 1)),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
            ],
        ),
        "IMAGE",
        "PatientID",
        tags::PATIENT_ID,
    );

    // With the keys, Patient Root answers within the named patient only.
    let q = ident(Level::Study, vec![pid("PID00001"), study_uid_key("")]);
    assert_eq!(
        column(&run(s, Model::PatientRoot, &q), tags::STUDY_INSTANCE_UID),
        sorted([study(1, 1), study(1, 2)])
    );
    let series_of = |patient: &str| {
        let q = ident(
            Level::Series,
            vec![
                pid(patient),
                study_uid_key(&study(1, 1)),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, ""),
            ],
        );
        column(&run(s, Model::PatientRoot, &q), tags::SERIES_INSTANCE_UID)
    };
    assert_eq!(
        series_of("PID00001"),
        sorted([series(1, 1, 1), series(1, 1, 2)])
    );
    assert_eq!(series_of("PID00002"), Vec::<String>::new());
    let q = ident(
        Level::Image,
        vec![
            pid("PID00001"),
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
            el(tags::SOP_INSTANCE_UID, Vr::UI, ""),
            el(tags::SOP_CLASS_UID, Vr::UI, ""),
        ],
    );
    let found = run(s, Model::PatientRoot, &q);
    assert_eq!(
        column(&found, tags::SOP_INSTANCE_UID),
        sorted([sop(1, 1, 1, 1), sop(1, 1, 1, 2)])
    );
    assert_eq!(
        column(&found, tags::SOP_CLASS_UID),
        sorted([CT_IMAGE_STORAGE, CT_IMAGE_STORAGE])
    );
    // A series named under the wrong study has no images there.
    let q = ident(
        Level::Image,
        vec![
            study_uid_key(&study(1, 2)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
            el(tags::SOP_INSTANCE_UID, Vr::UI, ""),
        ],
    );
    assert_eq!(run(s, Model::StudyRoot, &q), Vec::new());

    // There is no PATIENT level in the Study Root model.
    match s.find(Model::StudyRoot, &ident(Level::Patient, vec![pid("")]), CAP) {
        Err(QueryError::LevelNotInModel { level: "PATIENT" }) => {}
        other => panic!("expected LevelNotInModel, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_from_request_elements() {
    let a = archive().await;
    let s = &a.store;
    let level = |v: &[u8]| el(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, v);
    let elements = vec![
        // A group length carries no key.
        el(Tag::new(0x0008, 0x0000), Vr::UL, 40u32.to_le_bytes()),
        el(tags::SPECIFIC_CHARACTER_SET, Vr::CS, b"ISO_IR 192"),
        level(b"STUDY "),
        pn("MÜLLER*".as_bytes()),
        study_uid_key(""),
        study_date(""),
    ];
    let q = Identifier::from_elements(Model::StudyRoot, elements.clone()).unwrap();
    assert_eq!(q.level, Level::Study);
    assert_eq!(q.charset, Charset::from_raw(b"ISO_IR 192"));
    assert_eq!(q.keys, elements[3..].to_vec());
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(found.len(), 1, "{found:?}");
    let tags_out: Vec<Tag> = found[0].elements.iter().map(|e| e.tag).collect();
    assert_eq!(
        tags_out,
        [
            tags::PATIENT_NAME,
            tags::STUDY_INSTANCE_UID,
            tags::STUDY_DATE
        ]
    );
    assert_eq!(raw(&found[0], tags::PATIENT_NAME), padded(LATIN1_NAME));
    assert_eq!(text(&found[0], tags::STUDY_INSTANCE_UID), study(3, 1));
    assert_eq!(raw(&found[0], tags::STUDY_DATE), b"20260210");
    assert_eq!(found[0].charset, b"ISO_IR 100");

    // Without Specific Character Set, the default repertoire.
    let q = Identifier::from_elements(Model::PatientRoot, vec![level(b"PATIENT"), pid("PID00002")])
        .unwrap();
    assert_eq!((q.level, &q.charset), (Level::Patient, &Charset::Default));
    assert_eq!(run(s, Model::PatientRoot, &q).len(), 1);
    for (v, want) in [
        (&b"SERIES"[..], Level::Series),
        (b"IMAGE ", Level::Image),
        (b"STUDY", Level::Study),
    ] {
        let q = Identifier::from_elements(Model::StudyRoot, vec![level(v)]).unwrap();
        assert_eq!(q.level, want);
        assert!(q.keys.is_empty());
    }

    match Identifier::from_elements(Model::StudyRoot, vec![pn("DOE*"), study_uid_key("")]) {
        Err(QueryError::MissingLevel) => {}
        other => panic!("expected MissingLevel, got {other:?}"),
    }
    match Identifier::from_elements(Model::StudyRoot, vec![level(b"FOO "), pn("")]) {
        Err(QueryError::InvalidLevel(v)) => assert_eq!(v, "FOO"),
        other => panic!("expected InvalidLevel, got {other:?}"),
    }
    match Identifier::from_elements(Model::StudyRoot, vec![level(b"study")]) {
        Err(QueryError::InvalidLevel(v)) => assert_eq!(v, "study"),
        other => panic!("expected InvalidLevel, got {other:?}"),
    }
    match Identifier::from_elements(Model::StudyRoot, vec![level(b"PATIENT"), pid("")]) {
        Err(QueryError::LevelNotInModel { level: "PATIENT" }) => {}
        other => panic!("expected LevelNotInModel, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_matches_than_the_cap_refuse_the_query() {
    let a = archive().await;
    let s = &a.store;
    let all = ident(Level::Study, vec![study_uid_key("")]);
    assert_eq!(
        s.find(Model::StudyRoot, &all, STUDY_COUNT).unwrap().len(),
        STUDY_COUNT
    );
    match s.find(Model::StudyRoot, &all, STUDY_COUNT - 1) {
        Err(QueryError::TooManyMatches { cap }) => assert_eq!(cap, STUDY_COUNT - 1),
        other => panic!("expected TooManyMatches, got {other:?}"),
    }
    // Only matches count, not candidates.
    let january = ident(
        Level::Study,
        vec![study_uid_key(""), study_date("20260101-20260131")],
    );
    assert_eq!(s.find(Model::StudyRoot, &january, 3).unwrap().len(), 3);
    assert!(matches!(
        s.find(Model::StudyRoot, &january, 2),
        Err(QueryError::TooManyMatches { cap: 2 })
    ));
    let patients = ident(Level::Patient, vec![pid("")]);
    assert_eq!(
        s.find(Model::PatientRoot, &patients, PATIENT_COUNT)
            .unwrap()
            .len(),
        PATIENT_COUNT
    );
    assert!(matches!(
        s.find(Model::PatientRoot, &patients, PATIENT_COUNT - 1),
        Err(QueryError::TooManyMatches { .. })
    ));
    let images = ident(
        Level::Image,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
        ],
    );
    assert_eq!(s.find(Model::StudyRoot, &images, 2).unwrap().len(), 2);
    assert!(matches!(
        s.find(Model::StudyRoot, &images, 1),
        Err(QueryError::TooManyMatches { cap: 1 })
    ));
    assert_eq!(
        s.find(
            Model::StudyRoot,
            &ident(Level::Study, vec![study_uid_key("1.2.3.999")]),
            0
        )
        .unwrap(),
        Vec::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_sets() {
    let a = archive().await;
    let s = &a.store;
    // A UTF-8 query finds the Latin-1 patient; the response keeps the stored bytes and says
    // which character set they are in.
    let q = utf8(Level::Patient, vec![pn("MÜLLER*".as_bytes()), pid("")]);
    let found = run(s, Model::PatientRoot, &q);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].charset, b"ISO_IR 100");
    assert_eq!(raw(&found[0], tags::PATIENT_NAME), padded(LATIN1_NAME));
    assert_eq!(text(&found[0], tags::PATIENT_ID), "PID00003");
    assert_eq!(
        studies_in(
            s,
            Charset::from_raw(b"ISO_IR 192"),
            vec![pn("müller^hans".as_bytes())]
        ),
        sorted([study(3, 1)])
    );
    assert_eq!(
        studies_in(
            s,
            Charset::from_raw(b"ISO_IR 192"),
            vec![pn("M?LLER^*".as_bytes())]
        ),
        sorted([study(3, 1)])
    );
    // The same query in Latin-1.
    let latin1 = Charset::from_raw(b"ISO_IR 100");
    assert_eq!(
        studies_in(s, latin1.clone(), vec![pn(b"M\xfcller*")]),
        sorted([study(3, 1)])
    );
    // And the other way round: a Latin-1 query finds the UTF-8 patient.
    let q = Identifier {
        level: Level::Study,
        charset: latin1,
        keys: vec![pn(b"GARC\xcdA^JOS\xc9"), study_uid_key("")],
    };
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].charset, b"ISO_IR 192");
    assert_eq!(
        raw(&found[0], tags::PATIENT_NAME),
        padded("GARCÍA^JOSÉ".as_bytes())
    );
    assert_eq!(text(&found[0], tags::STUDY_INSTANCE_UID), study(4, 1));

    // The ISO 2022 patient comes back byte for byte on universal matching...
    let jis_patient = |found: &[Found]| -> Found {
        let hits: Vec<&Found> = found
            .iter()
            .filter(|f| text(f, tags::PATIENT_ID) == "PID00005")
            .collect();
        assert_eq!(hits.len(), 1, "{found:?}");
        hits[0].clone()
    };
    let found = run(
        s,
        Model::PatientRoot,
        &ident(Level::Patient, vec![pn(""), pid("")]),
    );
    assert_eq!(found.len(), PATIENT_COUNT);
    let f = jis_patient(&found);
    assert_eq!(f.charset, JIS_CHARSET);
    assert_eq!(raw(&f, tags::PATIENT_NAME), JIS_NAME);
    // ...and `*`, which is universal matching too...
    let found = run(
        s,
        Model::PatientRoot,
        &ident(Level::Patient, vec![pn("*"), pid("")]),
    );
    assert_eq!(found.len(), PATIENT_COUNT);
    assert_eq!(raw(&jis_patient(&found), tags::PATIENT_NAME), JIS_NAME);
    // ...and by Patient ID, at PATIENT and STUDY level.
    let found = run(
        s,
        Model::PatientRoot,
        &ident(Level::Patient, vec![pn(""), pid("PID00005")]),
    );
    let f = jis_patient(&found);
    assert_eq!(
        (f.charset.as_slice(), raw(&f, tags::PATIENT_NAME)),
        (JIS_CHARSET, JIS_NAME)
    );
    let found = run(
        s,
        Model::PatientRoot,
        &ident(
            Level::Study,
            vec![pid("PID00005"), pn(""), study_uid_key("")],
        ),
    );
    let f = jis_patient(&found);
    assert_eq!(
        (f.charset.as_slice(), raw(&f, tags::PATIENT_NAME)),
        (JIS_CHARSET, JIS_NAME)
    );
    assert_eq!(text(&f, tags::STUDY_INSTANCE_UID), study(5, 1));
    // A name pattern would need the value decoded, which this build cannot do for ISO 2022.
    for pattern in ["Yamada*", "YAMADA^TAROU*", "*Tarou*", "Yamada^Tarou=*"] {
        assert_eq!(
            patient_ids(s, vec![pn(pattern)]),
            Vec::<String>::new(),
            "{pattern}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_patient_id_from_two_issuers() {
    let a = archive().await;
    let s = &a.store;
    let q = |issuer: &str| {
        ident(
            Level::Patient,
            vec![
                pid("SHARED"),
                el(tags::ISSUER_OF_PATIENT_ID, Vr::LO, issuer),
                pn(""),
                el(tags::NUMBER_OF_PATIENT_RELATED_STUDIES, Vr::IS, ""),
            ],
        )
    };
    let found = run(s, Model::PatientRoot, &q(""));
    let mut rows: Vec<(String, String, String)> = found
        .iter()
        .map(|f| {
            (
                text(f, tags::ISSUER_OF_PATIENT_ID),
                text(f, tags::PATIENT_NAME),
                text(f, tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (
                "HOSP_A".to_string(),
                "SMITH^ANNA".to_string(),
                "1".to_string()
            ),
            (
                "HOSP_B".to_string(),
                "SMITH^ANNE".to_string(),
                "1".to_string()
            ),
        ]
    );
    let found = run(s, Model::PatientRoot, &q("HOSP_B"));
    assert_eq!(column(&found, tags::PATIENT_NAME), sorted(["SMITH^ANNE"]));
    assert_eq!(run(s, Model::PatientRoot, &q("HOSP_C")), Vec::new());

    // Studies: by Patient ID alone both, with the issuer one.
    assert_eq!(
        studies(s, vec![pid("SHARED")]),
        sorted([study(6, 1), study(7, 1)])
    );
    let q = ident(
        Level::Study,
        vec![
            pid("SHARED"),
            el(tags::ISSUER_OF_PATIENT_ID, Vr::LO, "HOSP_A"),
            study_uid_key(""),
        ],
    );
    assert_eq!(
        column(&run(s, Model::PatientRoot, &q), tags::STUDY_INSTANCE_UID),
        sorted([study(6, 1)])
    );
}

fn retrieve(store: &Store, model: Model, level: Level, keys: Vec<Element>) -> Vec<String> {
    let q = ident(level, keys);
    let found = store
        .resolve(model, &q)
        .unwrap_or_else(|e| panic!("{q:?} refused: {e}"));
    sorted(found.iter().map(|r| r.sop_instance_uid.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_for_retrieval() {
    let a = archive().await;
    let s = &a.store;
    let study_one = sorted([sop(1, 1, 1, 1), sop(1, 1, 1, 2), sop(1, 1, 2, 1)]);

    // STUDY level: every instance of the study, with what sending it needs.
    let q = ident(Level::Study, vec![study_uid_key(&study(1, 1))]);
    let found = s.resolve(Model::StudyRoot, &q).unwrap();
    assert_eq!(
        sorted(found.iter().map(|r| r.sop_instance_uid.clone())),
        study_one
    );
    for r in &found {
        assert_eq!(r.study_uid, study(1, 1));
        assert_eq!(r.transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN);
        let class = if r.sop_instance_uid == sop(1, 1, 2, 1) {
            MR_IMAGE_STORAGE
        } else {
            CT_IMAGE_STORAGE
        };
        assert_eq!(r.sop_class_uid, class);
        assert!(r.size > r.dataset_offset, "{r:?}");
    }
    let two = format!("{}\\{}", study(1, 1), study(2, 1));
    let mut want = study_one.clone();
    want.push(sop(2, 1, 1, 1));
    assert_eq!(
        retrieve(s, Model::StudyRoot, Level::Study, vec![study_uid_key(&two)]),
        sorted(want)
    );
    assert_eq!(
        retrieve(
            s,
            Model::PatientRoot,
            Level::Study,
            vec![pid("PID00001"), study_uid_key(&study(1, 1))]
        ),
        study_one
    );
    assert_eq!(
        retrieve(
            s,
            Model::StudyRoot,
            Level::Study,
            vec![study_uid_key("1.2.3.999")]
        ),
        Vec::<String>::new()
    );

    // SERIES level, with a list.
    let list = format!("{}\\{}", series(1, 1, 2), series(4, 1, 1));
    assert_eq!(
        retrieve(
            s,
            Model::StudyRoot,
            Level::Series,
            vec![
                study_uid_key(&study(1, 1)),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, list)
            ]
        ),
        sorted([sop(1, 1, 2, 1), sop(4, 1, 1, 1)])
    );
    assert_eq!(
        retrieve(
            s,
            Model::StudyRoot,
            Level::Series,
            vec![el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1))]
        ),
        sorted([sop(1, 1, 1, 1), sop(1, 1, 1, 2)])
    );

    // IMAGE level: exactly the listed instances that exist, each once.
    let list = format!(
        "{}\\{}\\1.2.3.999\\{}",
        sop(1, 1, 1, 2),
        sop(3, 1, 1, 1),
        sop(1, 1, 1, 2)
    );
    assert_eq!(
        retrieve(
            s,
            Model::StudyRoot,
            Level::Image,
            vec![el(tags::SOP_INSTANCE_UID, Vr::UI, list)]
        ),
        sorted([sop(1, 1, 1, 2), sop(3, 1, 1, 1)])
    );

    // PATIENT level: all the patient's studies; the issuer narrows.
    let mut want = study_one.clone();
    want.push(sop(1, 2, 1, 1));
    assert_eq!(
        retrieve(s, Model::PatientRoot, Level::Patient, vec![pid("PID00001")]),
        sorted(want)
    );
    assert_eq!(
        retrieve(s, Model::PatientRoot, Level::Patient, vec![pid("SHARED")]),
        sorted([sop(6, 1, 1, 1), sop(7, 1, 1, 1)])
    );
    assert_eq!(
        retrieve(
            s,
            Model::PatientRoot,
            Level::Patient,
            vec![
                pid("SHARED"),
                el(tags::ISSUER_OF_PATIENT_ID, Vr::LO, "HOSP_B")
            ]
        ),
        sorted([sop(7, 1, 1, 1)])
    );

    // Missing keys.
    let missing = |model: Model, level: Level, keys: Vec<Element>, name: &str, tag: Tag| {
        let q = ident(level, keys);
        match s.resolve(model, &q) {
            Err(QueryError::MissingRetrieveKey {
                level: l,
                name: n,
                tag: t,
            }) => {
                assert_eq!((l, n, t), (level.as_str(), name, tag), "{q:?}");
            }
            other => panic!("{q:?}: expected MissingRetrieveKey, got {other:?}"),
        }
    };
    missing(
        Model::StudyRoot,
        Level::Study,
        vec![],
        "StudyInstanceUID",
        tags::STUDY_INSTANCE_UID,
    );
    missing(
        Model::StudyRoot,
        Level::Study,
        vec![study_uid_key("")],
        "StudyInstanceUID",
        tags::STUDY_INSTANCE_UID,
    );
    missing(
        Model::PatientRoot,
        Level::Study,
        vec![study_uid_key(&study(1, 1))],
        "PatientID",
        tags::PATIENT_ID,
    );
    missing(
        Model::StudyRoot,
        Level::Series,
        vec![study_uid_key(&study(1, 1))],
        "SeriesInstanceUID",
        tags::SERIES_INSTANCE_UID,
    );
    missing(
        Model::StudyRoot,
        Level::Image,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::SERIES_INSTANCE_UID, Vr::UI, series(1, 1, 1)),
        ],
        "SOPInstanceUID",
        tags::SOP_INSTANCE_UID,
    );
    missing(
        Model::PatientRoot,
        Level::Patient,
        vec![pn("DOE^JOHN")],
        "PatientID",
        tags::PATIENT_ID,
    );
    // There is no PATIENT level in the Study Root model.
    match s.resolve(
        Model::StudyRoot,
        &ident(Level::Patient, vec![pid("PID00001")]),
    ) {
        Err(QueryError::LevelNotInModel { level: "PATIENT" }) => {}
        other => panic!("expected LevelNotInModel, got {other:?}"),
    }
}

// A later study of a patient gave a different name (DOE^JOHNNY for PID00001). The name index
// used to hold only the patient record's (first) name, so a study-level name query narrowed
// through it and missed that study, although matching uses the name each study gave, and the
// same query found it once a Patient ID or accession number picked the candidates instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_level_names_find_studies_that_named_the_patient_differently() {
    let a = archive().await;
    let mut later = SynthInstance::ct(1, 9, 1, 1);
    later.patient_name = b"DOE^JOHNNY".to_vec();
    assert_eq!(store_instance(&a.store, &later).await, Outcome::Stored);
    assert_eq!(studies(&a.store, vec![pn("DOE^JOHNNY")]), vec![study(1, 9)]);
    assert_eq!(studies(&a.store, vec![pn("doe^johnn*")]), vec![study(1, 9)]);
    let mut all_does = vec![
        study(1, 1),
        study(1, 2),
        study(1, 9),
        study(2, 1),
        study(2, 2),
    ];
    all_does.sort();
    assert_eq!(studies(&a.store, vec![pn("DOE^*")]), all_does);
    // The patient record keeps the first name, and the disagreement is recorded.
    assert_eq!(
        patient_ids(&a.store, vec![pn("DOE^JOHNNY")]),
        Vec::<String>::new()
    );
    let conflicts = a.store.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].study_uid, study(1, 9));
    assert_eq!(
        conflicts[0].differences,
        vec![(
            "PatientName".to_string(),
            "DOE^JOHN".to_string(),
            "DOE^JOHNNY".to_string()
        )]
    );
}

// A partial date such as 202601 is not a valid DA value, but it used to narrow through the
// date index as an exact key (finding nothing) while the matcher treated it as the month, so
// the answer depended on which index picked the candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_dates_give_the_same_answer_whatever_the_index() {
    let a = archive().await;
    let by_date = studies(&a.store, vec![study_date("202601")]);
    let by_patient = studies(&a.store, vec![study_date("202601"), pid("PID00001")]);
    assert_eq!(by_date, sorted([study(1, 1), study(1, 2), study(5, 1)]));
    assert_eq!(by_patient, sorted([study(1, 1), study(1, 2)]));
}

// In the Patient Root model a retrieval names the patient, but resolve() used to send any
// study whose UID was listed, even one of another patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_root_retrieval_stays_within_the_named_patient() {
    let a = archive().await;
    let keys = vec![
        pid("PID00001"),
        study_uid_key(&format!("{}\\{}", study(1, 2), study(2, 1))),
    ];
    assert_eq!(
        retrieve(&a.store, Model::PatientRoot, Level::Study, keys.clone()),
        vec![sop(1, 2, 1, 1)]
    );
    // Study Root has no patient in the identifier: both studies go.
    assert_eq!(
        retrieve(&a.store, Model::StudyRoot, Level::Study, keys),
        sorted([sop(1, 2, 1, 1), sop(2, 1, 1, 1)])
    );
}

/// `count` distinct zero-length private keys, the way the review built its identifier:
/// groups 0x0009, 0x000B, ..., elements 0x1000 to 0xFFFF.
fn empty_private_keys(count: usize) -> Vec<Element> {
    (0..count)
        .map(|i| {
            let group = 0x0009 + 2 * (i / 0xF000) as u16;
            let element = 0x1000 + (i % 0xF000) as u16;
            el(Tag::new(group, element), Vr::LO, b"")
        })
        .collect()
}

fn refusal(r: Result<impl std::fmt::Debug, QueryError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_of_120000_empty_keys_is_refused() {
    // Review finding 3: every key of an identifier became an element of every response, with
    // no limit. 120,000 zero-length private keys (about 1 MiB) are universal matching, so
    // every study matched and each match cost about 4 MiB before anything was sent: 300
    // studies took the process to 2.8 GB. Identifiers are now capped at MAX_KEYS distinct
    // keys, and keys the archive cannot answer are not built into responses at all.
    let a = archive().await;
    let s = &a.store;
    let level = el(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY ");
    let mut elements = vec![level.clone()];
    elements.extend(empty_private_keys(120_000));
    let why = refusal(Identifier::from_elements(Model::StudyRoot, elements));
    assert!(why.contains("over 1024 distinct keys"), "{why}");
    // An identifier built directly (as QIDO-RS will) is refused by the query itself.
    let direct = ident(Level::Study, empty_private_keys(120_000));
    let why = refusal(s.find(Model::StudyRoot, &direct, CAP));
    assert!(why.contains("over 1024 distinct keys"), "{why}");

    // At the limit the query is answered, with only the keys the archive holds.
    let mut elements = vec![level, study_uid_key("")];
    elements.extend(empty_private_keys(1023));
    let q = Identifier::from_elements(Model::StudyRoot, elements).unwrap();
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(found.len(), STUDY_COUNT);
    for f in &found {
        let returned: Vec<Tag> = f.elements.iter().map(|e| e.tag).collect();
        assert_eq!(returned, [tags::STUDY_INSTANCE_UID]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_answered_once() {
    // Review finding 3: duplicated keys were kept, matched and answered once per copy, so a
    // tag repeated millions of times (cheap over a Deflated context) multiplied every
    // response. The first occurrence now counts, and each tag is answered once.
    let a = archive().await;
    let s = &a.store;
    let elements = vec![
        el(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY "),
        pn("DOE^JOHN"),
        pn(""),
        study_uid_key(""),
        study_uid_key(""),
        study_uid_key(""),
    ];
    let q = Identifier::from_elements(Model::StudyRoot, elements).unwrap();
    assert_eq!(q.keys, vec![pn("DOE^JOHN"), study_uid_key("")]);
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(
        column(&found, tags::STUDY_INSTANCE_UID),
        sorted([study(1, 1), study(1, 2)])
    );
    for f in &found {
        let returned: Vec<Tag> = f.elements.iter().map(|e| e.tag).collect();
        assert_eq!(returned, [tags::PATIENT_NAME, tags::STUDY_INSTANCE_UID]);
    }
    // Duplicates in an identifier built directly are answered once too.
    let direct = ident(
        Level::Study,
        vec![
            study_uid_key(&study(1, 1)),
            pn(""),
            study_uid_key(""),
            pn(""),
        ],
    );
    let found = run(s, Model::StudyRoot, &direct);
    assert_eq!(found.len(), 1);
    let returned: Vec<Tag> = found[0].elements.iter().map(|e| e.tag).collect();
    assert_eq!(returned, [tags::STUDY_INSTANCE_UID, tags::PATIENT_NAME]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_archive_does_not_index_are_return_only() {
    // Review finding 11: a key the archive does not index, sent with a value, made every
    // entity fail to match, so a viewer that put Timezone Offset From UTC or the
    // institution in its study browser's query found nothing at all. PS3.4 C.4.1.1.4 lets
    // the SCP ignore such a key and say so with Pending 0xFF01; the archive now does.
    let a = archive().await;
    let s = &a.store;
    let keys = vec![
        study_uid_key(""),
        el(Tag::new(0x0008, 0x0201), Vr::SH, b"+0100"),
        // Indexed for series, not for studies.
        el(tags::INSTITUTION_NAME, Vr::LO, b"SOMEWHERE"),
        el(Tag::new(0x0009, 0x1010), Vr::LO, b"PRIVATE"),
        el(tags::ACCESSION_NUMBER, Vr::SH, b""),
    ];
    let q = ident(Level::Study, keys);
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(found.len(), STUDY_COUNT, "{found:?}");
    for f in &found {
        let returned: Vec<Tag> = f.elements.iter().map(|e| e.tag).collect();
        assert_eq!(returned, [tags::STUDY_INSTANCE_UID, tags::ACCESSION_NUMBER]);
    }
    assert_eq!(
        q.unmatched_keys(),
        [
            Tag::new(0x0008, 0x0201),
            tags::INSTITUTION_NAME,
            Tag::new(0x0009, 0x1010)
        ]
    );
    // Indexed keys still match: the same institution at SERIES level, where it is indexed,
    // matches no series, and nothing is reported unmatched.
    let q = ident(
        Level::Series,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::INSTITUTION_NAME, Vr::LO, b"SOMEWHERE"),
        ],
    );
    assert!(run(s, Model::StudyRoot, &q).is_empty());
    assert!(q.unmatched_keys().is_empty());
    // Universal keys the archive cannot answer are simply not returned.
    let q = ident(
        Level::Study,
        vec![
            study_uid_key(&study(1, 1)),
            el(tags::INSTITUTION_NAME, Vr::LO, b""),
        ],
    );
    assert!(q.unmatched_keys().is_empty());
    let found = run(s, Model::StudyRoot, &q);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].elements.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_values_over_64_kib_are_refused() {
    // Review, also noted: the identifier reader captured values over 64 KiB as empty, which
    // silently turned a Patient Name key into universal matching and answered every
    // patient. Such values are now refused, naming the key.
    let a = archive().await;
    let s = &a.store;
    let long = vec![b'A'; 64 * 1024 + 2];
    let why = refusal(Identifier::from_elements(
        Model::StudyRoot,
        vec![el(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY "), pn(&long)],
    ));
    assert!(why.contains("(0010,0010) is 65538 bytes long"), "{why}");
    let why = refusal(s.find(Model::StudyRoot, &ident(Level::Study, vec![pn(&long)]), CAP));
    assert!(why.contains("65538 bytes long"), "{why}");
    // Exactly 64 KiB is still a key.
    let at_limit = vec![b'A'; 64 * 1024];
    let q = Identifier::from_elements(
        Model::StudyRoot,
        vec![
            el(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY "),
            pn(&at_limit),
        ],
    )
    .unwrap();
    assert!(run(s, Model::StudyRoot, &q).is_empty());
}

/// ProcedureCodeSequence (0008,1032) with one item, in `enc`, as a data set holds it (the
/// element's value: the item).
fn procedure_code_items(enc: dataset::Encoding, code: &str) -> Vec<u8> {
    let mut item = Vec::new();
    dataset::encode::write_str(&mut item, enc, Tag::new(0x0008, 0x0100), Vr::SH, code);
    dataset::encode::write_str(&mut item, enc, Tag::new(0x0008, 0x0102), Vr::SH, "LOCAL");
    let mut items = Vec::new();
    items.extend_from_slice(&0xFFFEu16.to_le_bytes());
    items.extend_from_slice(&0xE000u16.to_le_bytes());
    items.extend_from_slice(&(item.len() as u32).to_le_bytes());
    items.extend_from_slice(&item);
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_keys_come_back_from_the_stored_data_set() {
    // Review finding 16: a viewer asking for ProcedureCodeSequence got it back empty from
    // every study, although the instances held it, because the index keeps no sequences
    // (and later the key was left out of responses altogether). Sequence keys are now
    // answered from a stored instance of each match, in either little endian syntax, and
    // come back empty only where the data has none.
    const PROCEDURE: Tag = Tag::new(0x0008, 0x1032);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let mut explicit = SynthInstance::ct(41, 1, 1, 1);
    explicit.extra.push((
        PROCEDURE,
        Vr::SQ,
        procedure_code_items(dataset::Encoding::EXPLICIT_LE, "CT-CHEST"),
    ));
    store_instance(&store, &explicit).await;
    // The same shape stored in Implicit VR Little Endian.
    let mut implicit = SynthInstance::ct(42, 1, 1, 1);
    implicit.extra.push((
        PROCEDURE,
        Vr::SQ,
        procedure_code_items(dataset::Encoding::IMPLICIT_LE, "CT-HEAD"),
    ));
    let req = store::IngestRequest {
        transfer_syntax: dataset::ts::IMPLICIT_VR_LITTLE_ENDIAN.into(),
        ..crate::support::request(&implicit)
    };
    crate::support::store_bytes(
        &store,
        req,
        &implicit.dataset(dataset::Encoding::IMPLICIT_LE),
        16 * 1024,
    )
    .await
    .unwrap();
    let without = SynthInstance::ct(43, 1, 1, 1);
    store_instance(&store, &without).await;

    let procedure_of = |found: &Found| {
        found
            .elements
            .iter()
            .find(|e| e.tag == PROCEDURE)
            .map(|e| (e.vr, e.value.clone()))
            .expect("the sequence key is answered")
    };
    // What comes back is the item in Explicit VR LE, with undefined lengths.
    let expected = |code: &str| {
        dataset::sequence::reencode_items(
            &procedure_code_items(dataset::Encoding::EXPLICIT_LE, code),
            dataset::Encoding::EXPLICIT_LE,
            dataset::Encoding::EXPLICIT_LE,
        )
        .unwrap()
    };
    for (inst, code) in [
        (&explicit, Some("CT-CHEST")),
        (&implicit, Some("CT-HEAD")),
        (&without, None),
    ] {
        let q = ident(
            Level::Study,
            vec![
                el(tags::STUDY_INSTANCE_UID, Vr::UI, &inst.study_uid),
                el(PROCEDURE, Vr::SQ, b""),
            ],
        );
        let found = store.find(Model::StudyRoot, &q, CAP).unwrap();
        assert_eq!(found.len(), 1);
        let (vr, value) = procedure_of(&found[0]);
        assert_eq!(vr, Vr::SQ);
        assert_eq!(value, code.map(expected).unwrap_or_default(), "{:?}", code);
        // In ascending tag order, as any data set.
        let order: Vec<Tag> = found[0].elements.iter().map(|e| e.tag).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        // And at IMAGE level, from the instance itself.
        let q = ident(
            Level::Image,
            vec![
                el(tags::STUDY_INSTANCE_UID, Vr::UI, &inst.study_uid),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, &inst.series_uid),
                el(tags::SOP_INSTANCE_UID, Vr::UI, ""),
                el(PROCEDURE, Vr::SQ, b""),
            ],
        );
        let found = store.find(Model::StudyRoot, &q, CAP).unwrap();
        assert_eq!(
            procedure_of(&found[0]).1,
            code.map(expected).unwrap_or_default()
        );
    }
}
