//! Routing: which destinations, at which priority, an instance is queued for. The store calls
//! [`Rules::route`] inside the transaction that files the instance.

use dataset::Tag;
use store::record::{self, Extracted};
use store::{Route, Router};

/// Why the routing rules cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error(
        "rule {rule:?} matches on {tag}, which the archive does not index, so its value is not known when the instance is queued; use one of the indexed attributes (for example (0008,0060) Modality, (0008,1030) StudyDescription, (0008,103E) SeriesDescription, (0018,0015) BodyPartExamined, (0008,0080) InstitutionName, (0008,1010) StationName)"
    )]
    TagNotIndexed { rule: String, tag: Tag },
}

/// The routing rules of `[forward]`, plus who counts as upstream.
#[derive(Debug)]
pub struct Rules {
    destinations: Vec<String>,
    rules: Vec<config::Rule>,
    /// AE titles whose instances came from upstream: remotes marked `upstream = true` and
    /// the DICOM destinations themselves (instances fetched back from them).
    upstream: Vec<config::AeTitle>,
    /// Destinations configured with `overwrites = true`.
    overwriting: Vec<String>,
}

impl Rules {
    /// Every problem with the rules of `[forward]`, not only the first (for the start-up
    /// validation `check-config` and `serve` share).
    pub fn problems(forward: &config::Forward) -> Vec<RoutingError> {
        let indexed = record::capture_tags();
        let mut found = Vec::new();
        for rule in &forward.rules {
            for (tag, _) in &rule.matches {
                if !indexed.contains(&Tag(*tag)) {
                    found.push(RoutingError::TagNotIndexed {
                        rule: rule.name.clone(),
                        tag: Tag(*tag),
                    });
                }
            }
        }
        found
    }

    pub fn new(
        forward: &config::Forward,
        remotes: &[config::Remote],
    ) -> Result<Rules, RoutingError> {
        let indexed = record::capture_tags();
        for rule in &forward.rules {
            for (tag, _) in &rule.matches {
                if !indexed.contains(&Tag(*tag)) {
                    return Err(RoutingError::TagNotIndexed {
                        rule: rule.name.clone(),
                        tag: Tag(*tag),
                    });
                }
            }
        }
        let mut upstream: Vec<config::AeTitle> = remotes
            .iter()
            .filter(|r| r.upstream)
            .map(|r| r.ae_title.clone())
            .collect();
        for d in &forward.destinations {
            if let config::DestinationKind::Dicom(dicom) = &d.kind {
                upstream.push(dicom.ae_title.clone());
            }
        }
        Ok(Rules {
            destinations: forward
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect(),
            rules: forward.rules.clone(),
            upstream,
            overwriting: forward
                .destinations
                .iter()
                .filter(|d| d.overwrites)
                .map(|d| d.name.clone())
                .collect(),
        })
    }

    fn is_upstream(&self, source_ae: &str) -> bool {
        self.upstream.iter().any(|ae| ae.matches(source_ae))
    }
}

impl Router for Rules {
    fn destinations(&self) -> Vec<String> {
        self.destinations.clone()
    }

    fn replaces_copies(&self, destination: &str) -> bool {
        self.overwriting.iter().any(|d| d == destination)
    }

    fn route(&self, source_ae: &str, instance: &Extracted) -> Vec<Route> {
        // Nothing that came from upstream goes back up: no loops.
        if self.destinations.is_empty() || self.is_upstream(source_ae) {
            return Vec::new();
        }
        let routes = |names: &[String], priority: config::Priority| {
            names
                .iter()
                .map(|d| Route {
                    destination: d.clone(),
                    rank: priority as u8,
                })
                .collect()
        };
        for rule in &self.rules {
            if matches(rule, source_ae, instance) {
                return routes(&rule.destinations, rule.priority);
            }
        }
        routes(&self.destinations, config::Priority::Normal)
    }
}

fn matches(rule: &config::Rule, source_ae: &str, x: &Extracted) -> bool {
    if !rule.calling_ae.is_empty() && !rule.calling_ae.iter().any(|ae| ae.matches(source_ae)) {
        return false;
    }
    if !rule.modality.is_empty()
        && !rule
            .modality
            .iter()
            .any(|m| m.eq_ignore_ascii_case(x.modality.trim()))
    {
        return false;
    }
    rule.matches.iter().all(|(tag, pattern)| {
        let tag = Tag(*tag);
        let value = [&x.patient, &x.study, &x.series, &x.instance]
            .into_iter()
            .find(|attrs| record::find(attrs, tag).is_some())
            .map(|attrs| record::decoded(attrs, &x.charset, tag))
            .unwrap_or_default();
        wildcard(&pattern.to_uppercase(), &value.to_uppercase())
    })
}

/// `*` matches any run of characters, `?` one character: the archive's own C-FIND wildcard
/// matching, so a rule matches what a query with the same pattern would.
fn wildcard(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    store::query::glob(&p, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_dicom() {
        assert!(wildcard("*HEAD*", "CT HEAD W/O"));
        assert!(wildcard("CT?HEAD", "CT HEAD"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("*HEAD", "HEAD NECK"));
        assert!(wildcard("", ""));
        assert!(!wildcard("", "X"));
    }

    fn config(text: &str) -> config::Config {
        config::Config::parse(text, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn extracted(modality: &str, description: &str) -> Extracted {
        let inst = dataset::synth::SynthInstance::ct(1, 1, 1, 1);
        let bytes = inst.dataset(dataset::Encoding::EXPLICIT_LE);
        let info = dataset::ts::syntax_info(dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("a known syntax");
        let capture = dataset::Capture::Tags {
            tags: record::capture_tags(),
            max_len: 1024,
        };
        let walked =
            dataset::walk::walk_all(info, capture, &bytes).expect("synthetic data set walks");
        let mut x = record::extract(&walked).expect("synthetic data set extracts");
        x.modality = modality.into();
        x.study
            .retain(|a| a.tag() != dataset::tags::STUDY_DESCRIPTION);
        x.study.push(record::Attr {
            tag: dataset::tags::STUDY_DESCRIPTION.0,
            vr: *b"LO",
            value: description.as_bytes().to_vec(),
        });
        x
    }

    const TWO: &str = r#"
[[dicom.remote]]
ae_title = "PRIORS"
host = "10.0.0.8"
port = 104
upstream = true

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "PACS"
host = "pacs"
port = 104

[[forward.destination]]
name = "cloud"
kind = "dicomweb"
url = "https://cloud.example/dicom-web"

[[forward.rule]]
name = "stat heads to the PACS"
modality = ["CT"]
match = { "(0008,1030)" = "*head*" }
destinations = ["central"]
priority = "stat"

[[forward.rule]]
name = "ultrasound stays here"
modality = ["US"]
destinations = []
"#;

    fn route(rules: &Rules, source: &str, x: &Extracted) -> Vec<(String, u8)> {
        rules
            .route(source, x)
            .into_iter()
            .map(|r| (r.destination, r.rank))
            .collect()
    }

    #[test]
    fn rules_pick_destinations_and_priority_and_upstream_never_goes_back() {
        let c = config(TWO);
        let rules = Rules::new(&c.forward, &c.dicom.remotes).unwrap();
        let head = extracted("CT", "CT Head w/o");
        let chest = extracted("CT", "Chest");
        let us = extracted("US", "Abdomen");
        assert_eq!(route(&rules, "CT1", &head), [("central".into(), 0)]);
        assert_eq!(
            route(&rules, "CT1", &chest),
            [("central".into(), 2), ("cloud".into(), 2)]
        );
        assert!(route(&rules, "US1", &us).is_empty());
        assert!(
            route(&rules, "PRIORS", &chest).is_empty(),
            "upstream remote"
        );
        assert!(route(&rules, "PACS", &chest).is_empty(), "fetched back");
    }

    #[test]
    fn a_rule_on_an_attribute_the_index_does_not_keep_is_refused() {
        let c = config(
            r#"
[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "PACS"
host = "pacs"
port = 104
[[forward.rule]]
match = { "(0019,1001)" = "X" }
destinations = ["central"]
"#,
        );
        let e = Rules::new(&c.forward, &c.dicom.remotes).unwrap_err();
        assert!(e.to_string().contains("(0019,1001)"), "{e}");
    }
}
