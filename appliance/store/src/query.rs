//! C-FIND matching and C-MOVE/C-GET resolution against the index (PS3.4 C.2.2.2, C.4).
//!
//! A query picks its candidates through the narrowest index the identifier allows (UID lists,
//! Patient ID, accession number, study date, patient name prefix), falls back to a scan of
//! the level's table only when nothing narrower applies, and then checks every key against
//! each candidate. More matches than the cap refuse the query: never a truncated answer.

use std::collections::HashSet;

use dataset::charset::{Charset, is_charset_neutral};
use dataset::encode::{text_values, trim_padding};
use dataset::{Capture, Element, SyntaxInfo, Tag, Vr, WalkError, Walker, tags};
use redb::{
    ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};

use crate::record::{
    self, Attr, INSTANCE_TAGS, InstanceRecord, PATIENT_TAGS, PatientRecord, SERIES_TAGS,
    STUDY_TAGS, SeriesRecord, StudyRecord, patient_id_of,
};
use crate::{Store, StoreError};
use crate::{cache, index};

/// Most distinct keys an identifier may hold. Real identifiers carry a few dozen; every key
/// costs an element in every response, so an identifier of 130,000 empty keys once cost 4 MiB
/// per match. C-FIND and QIDO-RS both refuse identifiers above it.
pub const MAX_KEYS: usize = 1024;

/// Longest key value accepted. The identifier reader used to capture longer values as empty,
/// which silently turned a matching key into universal matching.
pub const MAX_KEY_VALUE: usize = 64 * 1024;

/// Whether an element of a request identifier is a key: QueryRetrieveLevel, Specific
/// Character Set and group lengths are not, and do not count towards [`MAX_KEYS`].
pub fn counts_as_key(tag: Tag) -> bool {
    tag != tags::QUERY_RETRIEVE_LEVEL && tag != tags::SPECIFIC_CHARACTER_SET && tag.element() != 0
}

/// Query/Retrieve information model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    PatientRoot,
    StudyRoot,
}

/// Query/Retrieve level (0008,0052).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    pub fn parse(value: &[u8]) -> Option<Level> {
        match trim_padding(value) {
            b"PATIENT" => Some(Level::Patient),
            b"STUDY" => Some(Level::Study),
            b"SERIES" => Some(Level::Series),
            b"IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }

    /// The unique key of this level.
    fn unique_key(self) -> (Tag, &'static str) {
        match self {
            Level::Patient => (tags::PATIENT_ID, "PatientID"),
            Level::Study => (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
            Level::Series => (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
            Level::Image => (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
        }
    }
}

/// Why a query or retrieval is refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("identifier lacks QueryRetrieveLevel (0008,0052)")]
    MissingLevel,
    #[error("QueryRetrieveLevel {0:?} is not one of PATIENT, STUDY, SERIES, IMAGE")]
    InvalidLevel(String),
    #[error("level {level} does not exist in the Study Root model")]
    LevelNotInModel { level: &'static str },
    #[error("{level} level needs the unique key {name} {tag} of the level above, as one value")]
    MissingUniqueKey {
        level: &'static str,
        name: &'static str,
        tag: Tag,
    },
    #[error("retrieval at {level} level needs {name} {tag}")]
    MissingRetrieveKey {
        level: &'static str,
        name: &'static str,
        tag: Tag,
    },
    #[error("more than {cap} matches; narrow the query")]
    TooManyMatches { cap: usize },
    // Error Comment holds 64 characters: these messages fit.
    #[error("identifier has over {limit} distinct keys; send fewer")]
    TooManyKeys { limit: usize },
    #[error("key {tag} is {len} bytes long, over the {limit} allowed")]
    KeyValueTooLong { tag: Tag, len: usize, limit: usize },
    #[error("identifier unreadable: {0}")]
    Unreadable(WalkError),
    #[error("identifier inflates to over {limit} bytes")]
    InflatesTooFar { limit: u64 },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Largest identifier accepted once inflated: over a Deflated context the limit on the wire
/// counts compressed bytes, and 1 MiB of deflate once inflated to 134 million elements.
pub const MAX_INFLATED_IDENTIFIER: u64 = 1024 * 1024;

/// Bytes handed to the walker at a time. Deflate expands at most about 1,032 times, so one
/// piece inflates to at most about 0.5 MiB before the bounds are checked again.
const FEED_PIECE: usize = 512;

/// Reads an identifier (C-FIND, C-MOVE, C-GET; QIDO-RS builds its own from the URL) in the
/// given transfer syntax, counting its size and distinct keys as it inflates, so one that would
/// hold too many keys or inflate too far is refused after a bounded amount of work. Values are
/// captured up to the inflated limit; [`Identifier::from_elements`] refuses those longer than a
/// key may be rather than read them as empty.
pub fn read_identifier(
    info: SyntaxInfo,
    model: Model,
    bytes: &[u8],
) -> Result<Identifier, QueryError> {
    let mut walker = Walker::new(
        info,
        Capture::All {
            max_len: MAX_INFLATED_IDENTIFIER as usize,
        },
    );
    let mut keys = HashSet::new();
    let mut counted = 0;
    for piece in bytes.chunks(FEED_PIECE) {
        walker.feed(piece).map_err(QueryError::Unreadable)?;
        if walker.offset() > MAX_INFLATED_IDENTIFIER {
            return Err(QueryError::InflatesTooFar {
                limit: MAX_INFLATED_IDENTIFIER,
            });
        }
        let captured = walker.captured();
        keys.extend(
            captured[counted..]
                .iter()
                .map(|e| e.tag)
                .filter(|t| counts_as_key(*t)),
        );
        counted = captured.len();
        if keys.len() > MAX_KEYS {
            return Err(QueryError::TooManyKeys { limit: MAX_KEYS });
        }
    }
    let walked = walker.finish().map_err(QueryError::Unreadable)?;
    Identifier::from_elements(model, walked.elements)
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for QueryError {
            fn from(e: $t) -> QueryError {
                QueryError::Store(StoreError::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    record::RecordError
);

/// A parsed C-FIND or retrieve identifier.
#[derive(Clone, Debug)]
pub struct Identifier {
    pub level: Level,
    pub charset: Charset,
    /// The keys, without QueryRetrieveLevel and SpecificCharacterSet, in identifier order.
    /// `from_elements` keeps the first of duplicated tags; `Store::find` answers a tag once.
    pub keys: Vec<Element>,
}

impl Identifier {
    /// Builds an identifier from the walked top-level elements of a request data set: at most
    /// [`MAX_KEYS`] distinct keys of at most [`MAX_KEY_VALUE`] bytes each, duplicates dropped.
    pub fn from_elements(model: Model, elements: Vec<Element>) -> Result<Identifier, QueryError> {
        let mut level = None;
        let mut charset = Charset::Default;
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for e in elements {
            if e.value.len() > MAX_KEY_VALUE {
                return Err(QueryError::KeyValueTooLong {
                    tag: e.tag,
                    len: e.value.len(),
                    limit: MAX_KEY_VALUE,
                });
            }
            match e.tag {
                tags::QUERY_RETRIEVE_LEVEL => {
                    level = Some(Level::parse(&e.value).ok_or_else(|| {
                        QueryError::InvalidLevel(
                            String::from_utf8_lossy(trim_padding(&e.value)).into_owned(),
                        )
                    })?)
                }
                tags::SPECIFIC_CHARACTER_SET => charset = Charset::from_raw(&e.value),
                // Group lengths carry no key.
                t if t.element() == 0 => {}
                // A data set holds each tag once (PS3.5 7.1); a repeated key is answered once,
                // with the first value.
                t if !seen.insert(t) => {}
                _ if keys.len() == MAX_KEYS => {
                    return Err(QueryError::TooManyKeys { limit: MAX_KEYS });
                }
                _ => keys.push(e),
            }
        }
        let level = level.ok_or(QueryError::MissingLevel)?;
        if model == Model::StudyRoot && level == Level::Patient {
            return Err(QueryError::LevelNotInModel { level: "PATIENT" });
        }
        Ok(Identifier {
            level,
            charset,
            keys,
        })
    }

    fn key(&self, tag: Tag) -> Option<&Element> {
        self.keys.iter().find(|e| e.tag == tag)
    }

    /// The decoded single value of a key, if it is present with one non-wildcard value.
    fn single(&self, tag: Tag) -> Option<String> {
        let e = self.key(tag)?;
        let v = self.charset.decode(trim_padding(&e.value))?;
        (!v.is_empty() && !v.contains(['\\', '*', '?'])).then_some(v)
    }

    /// The distinct values of a UID list key, in list order: a UID listed twice is still one
    /// entity, answered once.
    fn uids(&self, tag: Tag) -> Option<Vec<String>> {
        let e = self.key(tag)?;
        let mut seen = HashSet::new();
        let v: Vec<String> = text_values(&e.value)
            .filter(|v| !v.is_empty() && seen.insert(*v))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// Checks that the level exists in the model and the key count is within bounds
    /// (identifiers need not come from `from_elements`).
    fn check_model(&self, model: Model) -> Result<(), QueryError> {
        if model == Model::StudyRoot && self.level == Level::Patient {
            return Err(QueryError::LevelNotInModel { level: "PATIENT" });
        }
        if self.keys.len() > MAX_KEYS {
            return Err(QueryError::TooManyKeys { limit: MAX_KEYS });
        }
        if let Some(e) = self.keys.iter().find(|e| e.value.len() > MAX_KEY_VALUE) {
            return Err(QueryError::KeyValueTooLong {
                tag: e.tag,
                len: e.value.len(),
                limit: MAX_KEY_VALUE,
            });
        }
        Ok(())
    }

    /// The keys this archive answers at the query's level, each tag once, in request order.
    fn answered(&self) -> Vec<&Element> {
        let mut seen = HashSet::new();
        self.keys
            .iter()
            .filter(|k| answerable(self.level, k.tag) && seen.insert(k.tag))
            .collect()
    }

    /// Sequence keys the index does not hold: answered from a stored instance's data set
    /// (one instance of the matching entity), each tag once.
    fn sequence_keys(&self) -> Vec<Tag> {
        let mut seen = HashSet::new();
        self.keys
            .iter()
            .filter(|k| k.vr == Vr::SQ && !answerable(self.level, k.tag) && seen.insert(k.tag))
            .map(|k| k.tag)
            .collect()
    }

    /// Keys sent with a value that this archive cannot match at the query's level (it does
    /// not index them there). They are ignored for matching and not returned; PS3.4
    /// C.4.1.1.4 has the SCP say so with Pending 0xFF01 rather than match nothing.
    pub fn unmatched_keys(&self) -> Vec<Tag> {
        self.keys
            .iter()
            .filter(|k| !answerable(self.level, k.tag) && Matcher::new(k, &self.charset).is_some())
            .map(|k| k.tag)
            .collect()
    }

    /// Checks the unique keys the hierarchical model requires above the query level.
    fn check_hierarchy(&self, model: Model) -> Result<(), QueryError> {
        self.check_model(model)?;
        let above: &[Level] = match (model, self.level) {
            (_, Level::Patient) => &[],
            (Model::PatientRoot, Level::Study) => &[Level::Patient],
            (Model::PatientRoot, Level::Series) => &[Level::Patient, Level::Study],
            (Model::PatientRoot, Level::Image) => &[Level::Patient, Level::Study, Level::Series],
            (Model::StudyRoot, Level::Study) => &[],
            (Model::StudyRoot, Level::Series) => &[Level::Study],
            (Model::StudyRoot, Level::Image) => &[Level::Study, Level::Series],
        };
        for l in above {
            let (tag, name) = l.unique_key();
            if self.single(tag).is_none() {
                return Err(QueryError::MissingUniqueKey {
                    level: self.level.as_str(),
                    name,
                    tag,
                });
            }
        }
        Ok(())
    }
}

/// One C-FIND match: the response identifier's elements (without QueryRetrieveLevel) and the
/// character set their text is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub charset: Vec<u8>,
    pub elements: Vec<Element>,
}

/// The entity a match is of, to find a stored instance of it.
#[derive(Clone, Copy)]
enum Of<'a> {
    Patient(&'a str),
    Study(&'a str),
    Series(&'a str),
    Instance(&'a str, &'a InstanceRecord),
}

/// Longest stored sequence returned in a response; a longer one is answered empty, so a
/// response stays small whatever the files hold.
const MAX_RETURNED_SEQUENCE: u64 = 64 * 1024;

/// How far into a data set the sequences asked for are looked for; they come before the
/// pixel data, which is what makes files large.
const SEQUENCE_SEARCH: u64 = 4 * 1024 * 1024;

impl Store {
    /// An instance of the matched entity whose file is here (not evicted), to answer
    /// sequence keys from: its first series' first such instance, and so on down.
    fn representative(&self, t: &Tables, of: Of<'_>) -> Result<Option<InstanceRecord>, QueryError> {
        let series_of = |series: &str| -> Result<Option<InstanceRecord>, QueryError> {
            for sop in Tables::children(&t.series_instances, series)? {
                if !t.is_evicted(&sop)?
                    && let Some(i) = Tables::get::<InstanceRecord>(&t.instances, &sop)?
                {
                    return Ok(Some(i));
                }
            }
            Ok(None)
        };
        let study_of = |study: &str| -> Result<Option<InstanceRecord>, QueryError> {
            for series in Tables::children(&t.study_series, study)? {
                if let Some(i) = series_of(&series)? {
                    return Ok(Some(i));
                }
            }
            Ok(None)
        };
        match of {
            Of::Instance(sop, i) => Ok((!t.is_evicted(sop)?).then(|| i.clone())),
            Of::Series(uid) => series_of(uid),
            Of::Study(uid) => study_of(uid),
            Of::Patient(key) => {
                for study in Tables::children(&t.patient_studies, key)? {
                    if let Some(i) = study_of(&study)? {
                        return Ok(Some(i));
                    }
                }
                Ok(None)
            }
        }
    }

    /// The sequences `tags` of a stored instance, their items in Explicit VR Little Endian
    /// (the listener re-encodes them for the response's syntax); each one that is absent, too
    /// long, in a deflated or big-endian file, or unreadable is answered empty. Reading is
    /// bounded: the data set up to [`SEQUENCE_SEARCH`], each sequence up to
    /// [`MAX_RETURNED_SEQUENCE`].
    fn stored_sequences(&self, instance: Option<&InstanceRecord>, tags: &[Tag]) -> Vec<Element> {
        let values = instance
            .and_then(|i| self.read_sequences(i, tags))
            .unwrap_or_default();
        tags.iter()
            .map(|tag| Element {
                tag: *tag,
                vr: Vr::SQ,
                value: values
                    .iter()
                    .find(|(t, _)| t == tag)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn read_sequences(&self, i: &InstanceRecord, tags: &[Tag]) -> Option<Vec<(Tag, Vec<u8>)>> {
        use std::io::{Read, Seek, SeekFrom};
        let info = dataset::ts::syntax_info(&i.transfer_syntax)?;
        if info.deflated || info.encoding.big_endian {
            return None;
        }
        let mut wanted = tags.to_vec();
        wanted.sort();
        let mut walker = Walker::new(
            info,
            Capture::Tags {
                tags: wanted,
                max_len: 0,
            },
        );
        let mut file = self.open_file(&i.file).ok()?;
        file.seek(SeekFrom::Start(i.dataset_offset)).ok()?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        while walker.spans().len() < tags.len() && read < SEQUENCE_SEARCH {
            let n = file.read(&mut buffer).ok()?;
            if n == 0 {
                break;
            }
            read += n as u64;
            // A data set that stops parsing still yields the spans found before.
            if walker.feed(&buffer[..n]).is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        for span in walker.spans().to_vec() {
            if span.vr != Vr::SQ || span.end <= span.start {
                continue;
            }
            let len = span.end - span.start;
            if len > MAX_RETURNED_SEQUENCE {
                continue;
            }
            let mut bytes = vec![0u8; len as usize];
            file.seek(SeekFrom::Start(i.dataset_offset + span.start))
                .ok()?;
            file.read_exact(&mut bytes).ok()?;
            if let Some(items) = dataset::sequence::reencode_element(
                &bytes,
                info.encoding,
                dataset::Encoding::EXPLICIT_LE,
            ) {
                out.push((span.tag, items));
            }
        }
        Some(out)
    }
}

/// One instance to send for a C-MOVE or C-GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retrievable {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub file: String,
    pub dataset_offset: u64,
    pub size: u64,
    pub study_uid: String,
    /// The file was evicted: the instance is held only upstream until it is recalled.
    pub nearline: bool,
}

impl Retrievable {
    pub(crate) fn of(sop_instance_uid: String, i: InstanceRecord, nearline: bool) -> Retrievable {
        Retrievable {
            sop_instance_uid,
            sop_class_uid: i.sop_class_uid,
            transfer_syntax: i.transfer_syntax,
            file: i.file,
            dataset_offset: i.dataset_offset,
            size: i.size,
            study_uid: i.study_uid,
            nearline,
        }
    }
}

struct Tables {
    patients: ReadOnlyTable<&'static str, &'static [u8]>,
    studies: ReadOnlyTable<&'static str, &'static [u8]>,
    series: ReadOnlyTable<&'static str, &'static [u8]>,
    instances: ReadOnlyTable<&'static str, &'static [u8]>,
    patient_studies: ReadOnlyMultimapTable<&'static str, &'static str>,
    study_series: ReadOnlyMultimapTable<&'static str, &'static str>,
    series_instances: ReadOnlyMultimapTable<&'static str, &'static str>,
    by_date: ReadOnlyMultimapTable<&'static str, &'static str>,
    by_accession: ReadOnlyMultimapTable<&'static str, &'static str>,
    by_name: ReadOnlyMultimapTable<&'static str, &'static str>,
    studies_by_name: ReadOnlyMultimapTable<&'static str, &'static str>,
    evicted: ReadOnlyTable<&'static str, ()>,
    evicted_count: ReadOnlyTable<&'static str, u64>,
    /// Whether anything is evicted at all: when not, everything is ONLINE without a lookup.
    any_evicted: bool,
}

impl Tables {
    fn open(txn: &ReadTransaction) -> Result<Tables, QueryError> {
        Ok(Tables {
            patients: txn.open_table(index::PATIENTS)?,
            studies: txn.open_table(index::STUDIES)?,
            series: txn.open_table(index::SERIES)?,
            instances: txn.open_table(index::INSTANCES)?,
            patient_studies: txn.open_multimap_table(index::PATIENT_STUDIES)?,
            study_series: txn.open_multimap_table(index::STUDY_SERIES)?,
            series_instances: txn.open_multimap_table(index::SERIES_INSTANCES)?,
            by_date: txn.open_multimap_table(index::STUDIES_BY_DATE)?,
            by_accession: txn.open_multimap_table(index::STUDIES_BY_ACCESSION)?,
            by_name: txn.open_multimap_table(index::PATIENTS_BY_NAME)?,
            studies_by_name: txn.open_multimap_table(index::STUDIES_BY_NAME)?,
            any_evicted: !txn.open_table(cache::EVICTED)?.is_empty()?,
            evicted: txn.open_table(cache::EVICTED)?,
            evicted_count: txn.open_table(cache::EVICTED_COUNT)?,
        })
    }

    fn is_evicted(&self, sop: &str) -> Result<bool, QueryError> {
        Ok(self.any_evicted && self.evicted.get(sop)?.is_some())
    }

    /// InstanceAvailability of a study or series (`level` "study" or "series"): NEARLINE as
    /// soon as any of its instances is held only upstream, since it cannot all be sent at once.
    fn availability(&self, level: &str, uid: &str) -> Result<Element, QueryError> {
        let evicted = self.any_evicted
            && self
                .evicted_count
                .get(format!("{level}/{uid}").as_str())?
                .is_some_and(|v| v.value() > 0);
        Ok(availability(evicted))
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(
        table: &ReadOnlyTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, QueryError> {
        Ok(match table.get(key)? {
            Some(v) => Some(record::decode(v.value())?),
            None => None,
        })
    }

    fn children(
        table: &ReadOnlyMultimapTable<&'static str, &'static str>,
        key: &str,
    ) -> Result<Vec<String>, QueryError> {
        let mut out = Vec::new();
        for v in table.get(key)? {
            out.push(v?.value().to_string());
        }
        Ok(out)
    }

    /// Patient keys with this Patient ID, whatever the issuer.
    fn patients_with_id(&self, id: &str) -> Result<Vec<String>, QueryError> {
        let start = format!("{id}\u{0}");
        let end = format!("{id}\u{1}");
        let mut out = Vec::new();
        for row in self.patients.range(start.as_str()..end.as_str())? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// Patient keys whose indexed name starts with `prefix` (already upper case).
    fn patients_named(&self, prefix: &str) -> Result<Vec<String>, QueryError> {
        let mut out = Vec::new();
        for row in self.by_name.range(prefix..)? {
            let (k, values) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            for v in values {
                out.push(v?.value().to_string());
            }
        }
        Ok(out)
    }
}

/// A record of some level with the facts matching needs.
struct Entity<'a> {
    charset: &'a [u8],
    attrs: &'a [Attr],
}

/// Where a key's value comes from: the matched record first, then its ancestors.
struct Context<'a> {
    levels: Vec<Entity<'a>>,
    computed: Vec<Element>,
}

impl Context<'_> {
    /// The raw value and its character set, for a tag.
    fn value(&self, tag: Tag) -> Option<(&[u8], &[u8], Vr)> {
        if let Some(e) = self.computed.iter().find(|e| e.tag == tag) {
            return Some((&e.value, b"", e.vr));
        }
        for level in &self.levels {
            if let Some(a) = record::find(level.attrs, tag) {
                return Some((&a.value, level.charset, a.vr()));
            }
        }
        None
    }
}

impl Store {
    /// Answers a C-FIND. At most `cap` matches are returned; more refuse the query.
    pub fn find(
        &self,
        model: Model,
        query: &Identifier,
        cap: usize,
    ) -> Result<Vec<Found>, QueryError> {
        query.check_hierarchy(model)?;
        let txn = self.db()?.begin_read()?;
        let t = Tables::open(&txn)?;
        // Worked out once per query, not per match: the keys answered, and their matchers.
        let answered = query.answered();
        let matchers: Vec<(Tag, Matcher)> = answered
            .iter()
            .filter_map(|k| Matcher::new(k, &query.charset).map(|m| (k.tag, m)))
            .collect();
        let sequences = query.sequence_keys();
        let mut found = Vec::new();
        let mut push =
            |ctx: &Context, primary_charset: &[u8], of: Of<'_>| -> Result<(), QueryError> {
                if !matchers.iter().all(|(tag, m)| m.matches(ctx.value(*tag))) {
                    return Ok(());
                }
                if found.len() >= cap {
                    return Err(QueryError::TooManyMatches { cap });
                }
                let mut response = respond(&answered, ctx, primary_charset);
                if !sequences.is_empty() {
                    let instance = self.representative(&t, of)?;
                    response
                        .elements
                        .extend(self.stored_sequences(instance.as_ref(), &sequences));
                    // A data set is in ascending tag order (PS3.5 7.1).
                    response.elements.sort_by_key(|e| e.tag);
                }
                found.push(response);
                Ok(())
            };
        match query.level {
            Level::Patient => {
                for key in patient_candidates(&t, query)? {
                    let Some(p) = Tables::get::<PatientRecord>(&t.patients, &key)? else {
                        continue;
                    };
                    let ctx = Context {
                        levels: vec![Entity {
                            charset: &p.charset,
                            attrs: &p.attrs,
                        }],
                        computed: vec![
                            count(
                                tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
                                u64::from(p.studies),
                            ),
                            count(tags::NUMBER_OF_PATIENT_RELATED_SERIES, u64::from(p.series)),
                            count(tags::NUMBER_OF_PATIENT_RELATED_INSTANCES, p.instances),
                        ],
                    };
                    push(&ctx, &p.charset, Of::Patient(&key))?;
                }
            }
            Level::Study => {
                for uid in study_candidates(&t, query)? {
                    let Some(s) = Tables::get::<StudyRecord>(&t.studies, &uid)? else {
                        continue;
                    };
                    let ctx = Context {
                        levels: vec![Entity {
                            charset: &s.charset,
                            attrs: &s.attrs,
                        }],
                        computed: {
                            let mut c = study_computed(&s);
                            c.push(t.availability("study", &uid)?);
                            c
                        },
                    };
                    push(&ctx, &s.charset, Of::Study(&uid))?;
                }
            }
            Level::Series => {
                let study_uid = query.single(tags::STUDY_INSTANCE_UID).unwrap_or_default();
                let Some(study) = Tables::get::<StudyRecord>(&t.studies, &study_uid)? else {
                    return Ok(found);
                };
                if !patient_matches(query, &study.patient_key) {
                    return Ok(found);
                }
                let uids = match query.uids(tags::SERIES_INSTANCE_UID) {
                    Some(list) if !has_wildcards(query, tags::SERIES_INSTANCE_UID) => list,
                    _ => Tables::children(&t.study_series, &study_uid)?,
                };
                for uid in uids {
                    let Some(s) = Tables::get::<SeriesRecord>(&t.series, &uid)? else {
                        continue;
                    };
                    if s.study_uid != study_uid {
                        continue;
                    }
                    let ctx = Context {
                        levels: vec![
                            Entity {
                                charset: &s.charset,
                                attrs: &s.attrs,
                            },
                            Entity {
                                charset: &study.charset,
                                attrs: &study.attrs,
                            },
                        ],
                        computed: vec![
                            count(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, s.instances),
                            t.availability("series", &uid)?,
                        ],
                    };
                    push(&ctx, &s.charset, Of::Series(&uid))?;
                }
            }
            Level::Image => {
                let study_uid = query.single(tags::STUDY_INSTANCE_UID).unwrap_or_default();
                let series_uid = query.single(tags::SERIES_INSTANCE_UID).unwrap_or_default();
                let Some(study) = Tables::get::<StudyRecord>(&t.studies, &study_uid)? else {
                    return Ok(found);
                };
                let Some(series) = Tables::get::<SeriesRecord>(&t.series, &series_uid)? else {
                    return Ok(found);
                };
                if series.study_uid != study_uid || !patient_matches(query, &study.patient_key) {
                    return Ok(found);
                }
                let uids = match query.uids(tags::SOP_INSTANCE_UID) {
                    Some(list) if !has_wildcards(query, tags::SOP_INSTANCE_UID) => list,
                    _ => Tables::children(&t.series_instances, &series_uid)?,
                };
                for uid in uids {
                    let Some(i) = Tables::get::<InstanceRecord>(&t.instances, &uid)? else {
                        continue;
                    };
                    if i.series_uid != series_uid {
                        continue;
                    }
                    let ctx = Context {
                        levels: vec![
                            Entity {
                                charset: &i.charset,
                                attrs: &i.attrs,
                            },
                            Entity {
                                charset: &series.charset,
                                attrs: &series.attrs,
                            },
                            Entity {
                                charset: &study.charset,
                                attrs: &study.attrs,
                            },
                        ],
                        computed: vec![
                            Element {
                                tag: tags::AVAILABLE_TRANSFER_SYNTAX_UID,
                                vr: Vr::UI,
                                value: i.transfer_syntax.as_bytes().to_vec(),
                            },
                            Element {
                                tag: tags::SOP_INSTANCE_UID,
                                vr: Vr::UI,
                                value: uid.as_bytes().to_vec(),
                            },
                            availability(t.is_evicted(&uid)?),
                        ],
                    };
                    push(&ctx, &i.charset, Of::Instance(&uid, &i))?;
                }
            }
        }
        Ok(found)
    }

    /// Resolves a C-MOVE or C-GET identifier to the instances to send, in series order.
    pub fn resolve(
        &self,
        model: Model,
        query: &Identifier,
    ) -> Result<Vec<Retrievable>, QueryError> {
        query.check_model(model)?;
        let txn = self.db()?.begin_read()?;
        let t = Tables::open(&txn)?;
        let need = |tag: Tag, name: &'static str| {
            query.uids(tag).ok_or(QueryError::MissingRetrieveKey {
                level: query.level.as_str(),
                name,
                tag,
            })
        };
        let mut series: Vec<String> = Vec::new();
        let mut instances: Vec<String> = Vec::new();
        match query.level {
            Level::Patient => {
                let ids = need(tags::PATIENT_ID, "PatientID")?;
                let issuer = query.single(tags::ISSUER_OF_PATIENT_ID);
                for id in ids {
                    for key in t.patients_with_id(&id)? {
                        if issuer
                            .as_ref()
                            .is_some_and(|i| key != record::patient_key(&id, i))
                        {
                            continue;
                        }
                        for study in Tables::children(&t.patient_studies, &key)? {
                            series.extend(Tables::children(&t.study_series, &study)?);
                        }
                    }
                }
            }
            Level::Study => {
                if model == Model::PatientRoot {
                    need(tags::PATIENT_ID, "PatientID")?;
                }
                for study in need(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")? {
                    series.extend(Tables::children(&t.study_series, &study)?);
                }
            }
            Level::Series => {
                series = need(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
            }
            Level::Image => {
                instances = need(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
            }
        }
        for s in &series {
            instances.extend(Tables::children(&t.series_instances, s)?);
        }
        // In the Patient Root model the identifier names the patient: only that patient's
        // instances are sent, whatever UIDs the lower levels list.
        let owner = match (model, query.level) {
            (Model::PatientRoot, Level::Study | Level::Series | Level::Image) => {
                Some(need(tags::PATIENT_ID, "PatientID")?)
            }
            _ => None,
        };
        let mut owned_studies: std::collections::HashMap<String, bool> = Default::default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for uid in instances {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(i) = Tables::get::<InstanceRecord>(&t.instances, &uid)? {
                if let Some(ids) = &owner {
                    let owned = match owned_studies.get(&i.study_uid) {
                        Some(o) => *o,
                        None => {
                            let o = Tables::get::<StudyRecord>(&t.studies, &i.study_uid)?
                                .is_some_and(|s| {
                                    ids.iter().any(|id| patient_id_of(&s.patient_key) == id)
                                });
                            owned_studies.insert(i.study_uid.clone(), o);
                            o
                        }
                    };
                    if !owned {
                        continue;
                    }
                }
                let nearline = t.is_evicted(&uid)?;
                out.push(Retrievable::of(uid, i, nearline));
            }
        }
        Ok(out)
    }

    /// Number of instances in the index.
    pub fn instance_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(index::INSTANCES)?.len()?)
    }

    /// The recorded patient-demographics conflicts.
    pub fn conflicts(&self) -> Result<Vec<record::Conflict>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(index::CONFLICTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(record::decode(row?.1.value())?);
        }
        Ok(out)
    }
}

fn has_wildcards(query: &Identifier, tag: Tag) -> bool {
    query
        .key(tag)
        .is_some_and(|e| e.value.contains(&b'*') || e.value.contains(&b'?'))
}

/// In the Patient Root model a lower-level query names the patient; the study must belong to
/// that patient.
fn patient_matches(query: &Identifier, patient_key: &str) -> bool {
    match query.single(tags::PATIENT_ID) {
        Some(id) => patient_id_of(patient_key) == id,
        None => true,
    }
}

fn patient_candidates(t: &Tables, q: &Identifier) -> Result<Vec<String>, QueryError> {
    if let Some(id) = q.single(tags::PATIENT_ID) {
        return t.patients_with_id(&id);
    }
    if let Some(prefix) = name_prefix(q) {
        return t.patients_named(&prefix);
    }
    let mut out = Vec::new();
    for row in t.patients.iter()? {
        out.push(row?.0.value().to_string());
    }
    Ok(out)
}

fn study_candidates(t: &Tables, q: &Identifier) -> Result<Vec<String>, QueryError> {
    if let Some(list) = q.uids(tags::STUDY_INSTANCE_UID)
        && !has_wildcards(q, tags::STUDY_INSTANCE_UID)
    {
        return Ok(list);
    }
    if let Some(id) = q.single(tags::PATIENT_ID) {
        let mut out = Vec::new();
        for key in t.patients_with_id(&id)? {
            out.extend(Tables::children(&t.patient_studies, &key)?);
        }
        return Ok(out);
    }
    if let Some(acc) = q.single(tags::ACCESSION_NUMBER) {
        return Tables::children(&t.by_accession, &acc);
    }
    if let Some(e) = q.key(tags::STUDY_DATE)
        && let Some((lo, hi)) = date_bounds(&e.value)
    {
        let mut out = Vec::new();
        for row in t.by_date.range(lo.as_str()..=hi.as_str())? {
            for v in row?.1 {
                out.push(v?.value().to_string());
            }
        }
        return Ok(out);
    }
    if let Some(prefix) = name_prefix(q) {
        // Studies are matched on the patient name each study gave, so they have their own
        // name index.
        let mut out = Vec::new();
        for row in t.studies_by_name.range(prefix.as_str()..)? {
            let (k, values) = row?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            for v in values {
                out.push(v?.value().to_string());
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for row in t.studies.iter()? {
        out.push(row?.0.value().to_string());
    }
    Ok(out)
}

/// The literal prefix of a Patient Name key, upper case, for a range over the name index.
/// Only a prefix followed by at most a trailing `*` narrows safely.
fn name_prefix(q: &Identifier) -> Option<String> {
    let e = q.key(tags::PATIENT_NAME)?;
    let v = q.charset.decode(trim_padding(&e.value))?;
    if v.is_empty() || v.contains('\\') {
        return None;
    }
    let literal: String = v.chars().take_while(|c| *c != '*' && *c != '?').collect();
    let prefix = normalize_pn(&literal);
    (!prefix.is_empty()).then_some(prefix)
}

/// Inclusive key bounds for a date key: single value or range; `None` for lists or empties.
fn date_bounds(value: &[u8]) -> Option<(String, String)> {
    let v = String::from_utf8_lossy(trim_padding(value)).into_owned();
    if v.is_empty() || v.contains('\\') {
        return None;
    }
    // The same normal forms the matcher uses, so that a partial date narrows to the range
    // it will match whichever index picks the candidates.
    let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
    let lo = normalize_time(lo.trim(), Vr::DA, false);
    let hi = normalize_time(hi.trim(), Vr::DA, true);
    Some((
        lo,
        if hi.is_empty() {
            "99999999".to_string()
        } else {
            hi
        },
    ))
}

fn availability(nearline: bool) -> Element {
    Element {
        tag: tags::INSTANCE_AVAILABILITY,
        vr: Vr::CS,
        value: if nearline {
            b"NEARLINE".to_vec()
        } else {
            b"ONLINE".to_vec()
        },
    }
}

fn count(tag: Tag, n: u64) -> Element {
    Element {
        tag,
        vr: Vr::IS,
        value: n.to_string().into_bytes(),
    }
}

fn study_computed(s: &StudyRecord) -> Vec<Element> {
    vec![
        count(tags::NUMBER_OF_STUDY_RELATED_SERIES, u64::from(s.series)),
        count(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, s.instances),
        Element {
            tag: tags::MODALITIES_IN_STUDY,
            vr: Vr::CS,
            value: s.modalities.join("\\").into_bytes(),
        },
        Element {
            tag: tags::SOP_CLASSES_IN_STUDY,
            vr: Vr::UI,
            value: s.sop_classes.join("\\").into_bytes(),
        },
    ]
}

/// Attributes the index holds, or works out, at a level: the level's own and its ancestors'
/// (a study record carries its patient's demographics), the counts and availability, and the
/// Retrieve AE Title the listener fills in.
fn answerable(level: Level, tag: Tag) -> bool {
    let computed: &[Tag] = match level {
        Level::Patient => &[
            tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
            tags::NUMBER_OF_PATIENT_RELATED_SERIES,
            tags::NUMBER_OF_PATIENT_RELATED_INSTANCES,
        ],
        Level::Study => &[
            tags::NUMBER_OF_STUDY_RELATED_SERIES,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            tags::MODALITIES_IN_STUDY,
            tags::SOP_CLASSES_IN_STUDY,
        ],
        Level::Series => &[tags::NUMBER_OF_SERIES_RELATED_INSTANCES],
        Level::Image => &[tags::AVAILABLE_TRANSFER_SYNTAX_UID],
    };
    let indexed: &[&[Tag]] = match level {
        Level::Patient => &[PATIENT_TAGS],
        Level::Study => &[STUDY_TAGS, PATIENT_TAGS],
        Level::Series => &[SERIES_TAGS, STUDY_TAGS, PATIENT_TAGS],
        Level::Image => &[INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, PATIENT_TAGS],
    };
    matches!(tag, tags::RETRIEVE_AE_TITLE | tags::INSTANCE_AVAILABILITY)
        || computed.contains(&tag)
        || indexed.iter().any(|l| l.contains(&tag))
}

/// Builds the response to one match: every answered key, in the order asked, with the value
/// this entity has (or empty), in the entity's character set.
fn respond(keys: &[&Element], ctx: &Context, primary: &[u8]) -> Found {
    let target = Charset::from_raw(primary);
    let mut elements = Vec::with_capacity(keys.len());
    for key in keys {
        let value = match ctx.value(key.tag) {
            Some((raw, source, _)) if key.vr != Vr::SQ => {
                if source == primary || is_charset_neutral(raw) {
                    raw.to_vec()
                } else {
                    // A value from a record in another character set: convert if possible,
                    // otherwise leave it empty rather than mislabel its bytes.
                    Charset::from_raw(source)
                        .decode(trim_padding(raw))
                        .and_then(|text| target.encode(&text))
                        .unwrap_or_default()
                }
            }
            _ => Vec::new(),
        };
        let vr = ctx.value(key.tag).map_or(key.vr, |(_, _, vr)| vr);
        let vr = if key.vr == Vr::SQ { Vr::SQ } else { vr };
        elements.push(Element {
            tag: key.tag,
            vr,
            value,
        });
    }
    Found {
        charset: primary.to_vec(),
        elements,
    }
}

/// How one key matches (PS3.4 C.2.2.2).
#[derive(Debug)]
enum Matcher {
    /// Any of the values, compared exactly (UID lists, numbers, codes).
    Exact(Vec<Vec<u8>>),
    /// Any of the decoded text values; `fold` for case-insensitive person names.
    Text { values: Vec<String>, fold: bool },
    /// A pattern with `*` and `?`.
    Wildcard { pattern: Vec<char>, fold: bool },
    /// Date, time or datetime ranges, inclusive, compared on normalized strings. A single
    /// value is the range its precision covers (`1200` is 12:00:00 to 12:00:59.999999).
    Ranges {
        ranges: Vec<(String, String)>,
        vr: Vr,
    },
    /// A key whose value the query could not decode: nothing can match it.
    Never,
}

impl Matcher {
    /// `None` for universal matching (empty value) and sequence keys: return keys only.
    fn new(key: &Element, charset: &Charset) -> Option<Matcher> {
        let raw = trim_padding(&key.value);
        if raw.is_empty() || key.vr == Vr::SQ {
            return None;
        }
        // Computed counts are return keys only.
        if matches!(
            key.tag,
            tags::NUMBER_OF_PATIENT_RELATED_STUDIES
                | tags::NUMBER_OF_PATIENT_RELATED_SERIES
                | tags::NUMBER_OF_PATIENT_RELATED_INSTANCES
                | tags::NUMBER_OF_STUDY_RELATED_SERIES
                | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
                | tags::NUMBER_OF_SERIES_RELATED_INSTANCES
                | tags::QUERY_RETRIEVE_LEVEL
                | tags::RETRIEVE_AE_TITLE
                | tags::INSTANCE_AVAILABILITY
                | tags::AVAILABLE_TRANSFER_SYNTAX_UID
        ) {
            return None;
        }
        let vr = key.vr;
        if matches!(vr, Vr::DA | Vr::TM | Vr::DT) {
            // `*` and `?` are no wildcards in dates and times (C.2.2.2.4): such a value is
            // compared literally, and so matches no valid value.
            if raw.contains(&b'*') || raw.contains(&b'?') {
                return Some(Matcher::Exact(
                    text_values(raw).map(<[u8]>::to_vec).collect(),
                ));
            }
            let text = String::from_utf8_lossy(raw).into_owned();
            let ranges = text
                .split('\\')
                .map(|v| match v.split_once('-') {
                    Some((lo, hi)) => (
                        normalize_time(lo.trim(), vr, false),
                        normalize_time(hi.trim(), vr, true),
                    ),
                    None => (
                        normalize_time(v.trim(), vr, false),
                        normalize_time(v.trim(), vr, true),
                    ),
                })
                .collect();
            return Some(Matcher::Ranges { ranges, vr });
        }
        let wildcard_vr = matches!(
            vr,
            Vr::AE | Vr::CS | Vr::LO | Vr::LT | Vr::PN | Vr::SH | Vr::ST | Vr::UC | Vr::UT
        );
        let fold = vr == Vr::PN;
        // Wild Card Matching on `*` is Universal Matching (C.2.2.2.4): it also matches
        // entities without the attribute, or with a value that cannot be decoded.
        if wildcard_vr && raw.iter().all(|b| *b == b'*') {
            return None;
        }
        if wildcard_vr {
            let Some(text) = charset.decode(raw) else {
                return Some(Matcher::Never);
            };
            if text.contains(['*', '?']) && !text.contains('\\') {
                let text = if fold { normalize_pn(&text) } else { text };
                return Some(Matcher::Wildcard {
                    pattern: text.chars().collect(),
                    fold,
                });
            }
            let values = text
                .split('\\')
                .map(|v| {
                    let v = v.trim();
                    if fold { normalize_pn(v) } else { v.to_string() }
                })
                .collect();
            return Some(Matcher::Text { values, fold });
        }
        Some(Matcher::Exact(
            text_values(raw).map(<[u8]>::to_vec).collect(),
        ))
    }

    /// Whether an entity's value (raw bytes, their character set, VR) matches. A missing
    /// attribute matches nothing but universal matching, which never gets here.
    fn matches(&self, value: Option<(&[u8], &[u8], Vr)>) -> bool {
        let Some((raw, charset, _)) = value else {
            return false;
        };
        let raw = trim_padding(raw);
        match self {
            Matcher::Never => false,
            Matcher::Exact(values) => text_values(raw).any(|v| values.iter().any(|k| k == v)),
            Matcher::Ranges { ranges, vr } => text_values(raw).any(|v| {
                let v = normalize_time(&String::from_utf8_lossy(v), *vr, false);
                !v.is_empty()
                    && ranges
                        .iter()
                        .any(|(lo, hi)| (lo.is_empty() || v >= *lo) && (hi.is_empty() || v <= *hi))
            }),
            Matcher::Text { values, fold } => {
                let Some(text) = Charset::from_raw(charset).decode(raw) else {
                    return false;
                };
                text.split('\\').any(|v| {
                    let v = if *fold {
                        normalize_pn(v.trim())
                    } else {
                        v.trim().to_string()
                    };
                    values.contains(&v)
                })
            }
            Matcher::Wildcard { pattern, fold } => {
                let Some(text) = Charset::from_raw(charset).decode(raw) else {
                    return false;
                };
                text.split('\\').any(|v| {
                    let v = if *fold {
                        normalize_pn(v.trim())
                    } else {
                        v.trim().to_string()
                    };
                    glob(pattern, &v.chars().collect::<Vec<_>>())
                })
            }
        }
    }
}

/// Person names compare case-insensitively and without trailing empty components.
fn normalize_pn(v: &str) -> String {
    v.trim_end_matches(['^', '=', ' ']).to_uppercase()
}

/// Pads dates and times to full precision so that strings compare in time order: a lower
/// bound with zeros, an upper bound with the largest digits.
fn normalize_time(v: &str, vr: Vr, upper: bool) -> String {
    let v: String = v
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if v.is_empty() {
        return v;
    }
    let full = match vr {
        Vr::DA => 8,
        Vr::TM => 13,
        _ => 21,
    };
    let template_low = match vr {
        Vr::DA => "00000101".to_string(),
        Vr::TM => "000000.000000".to_string(),
        _ => "00000101000000.000000".to_string(),
    };
    let template_high = match vr {
        Vr::DA => "99991231".to_string(),
        Vr::TM => "235959.999999".to_string(),
        _ => "99991231235959.999999".to_string(),
    };
    let template = if upper { template_high } else { template_low };
    let mut out = v.clone();
    if out.len() < full {
        // Times without fractions may also lack the dot: fill from the template.
        out.push_str(&template[out.len().min(template.len())..]);
    }
    out.truncate(full);
    out
}

/// `*` matches any run of characters, `?` exactly one (DICOM wildcard matching, also used
/// by the forwarding rules).
pub fn glob(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        let g = |p: &str, t: &str| {
            glob(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
            )
        };
        assert!(g("DOE*", "DOE^JOHN"));
        assert!(g("*JOHN", "DOE^JOHN"));
        assert!(g("D?E*", "DOE"));
        assert!(!g("D?E", "DOES"));
        assert!(g("*", ""));
        assert!(g("M*LLER", "MÜLLER"));
    }

    #[test]
    fn times_normalize_for_ranges() {
        assert_eq!(normalize_time("20260101", Vr::DA, false), "20260101");
        assert_eq!(normalize_time("1200", Vr::TM, false), "120000.000000");
        assert_eq!(normalize_time("1200", Vr::TM, true), "120059.999999");
        assert_eq!(normalize_time("070000", Vr::TM, false), "070000.000000");
        assert!(normalize_time("0730", Vr::TM, false) > normalize_time("07", Vr::TM, false));
    }

    #[test]
    fn date_ranges() {
        assert_eq!(
            date_bounds(b"20260101-20260131"),
            Some(("20260101".into(), "20260131".into()))
        );
        assert_eq!(
            date_bounds(b"-20260131"),
            Some(("".into(), "20260131".into()))
        );
        assert_eq!(
            date_bounds(b"20260101-"),
            Some(("20260101".into(), "99999999".into()))
        );
        assert_eq!(
            date_bounds(b"202601"),
            Some(("20260101".into(), "20260131".into()))
        );
        assert_eq!(date_bounds(b""), None);
    }
}
