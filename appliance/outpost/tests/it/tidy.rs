//! Repository rules checked by `cargo test`: every Rust file says what it is for in a `//!`
//! line, no committed file names a package registry host or mirror, verdicts are decided in
//! one place, the crates' manifests keep the dependency directions ARCHITECTURE.md states,
//! and only the supervisor wires components.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name == "corpus" || name == "artifacts" {
            continue;
        }
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut all = Vec::new();
    files(&repo(), &mut all);
    let missing: Vec<_> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "files without a //! line: {missing:?}");
}

#[test]
fn no_registry_host_is_named() {
    // Tools use their configured package sources; a site mirror is configuration outside
    // the repository. Cargo.lock, as cargo writes it, is exempt.
    let hosts = [
        concat!("crates", ".io/"),
        concat!("pypi", ".org"),
        concat!("files.", "pythonhosted"),
        concat!("registry.", "npmjs"),
        concat!("deb.", "debian.org"),
        concat!("security.", "debian.org"),
        concat!("static.", "crates.io"),
    ];
    let mut all = Vec::new();
    files(&repo(), &mut all);
    let mut offenders = Vec::new();
    for p in all
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "Cargo.lock"))
    {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        for h in hosts {
            if text.contains(h) {
                offenders.push(format!("{} names {h}", p.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// The non-test part of a source file: everything before its `#[cfg(test)]` module (test
/// modules come last here, by convention).
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The text of a struct literal or pattern that starts at `at` (just past `{`), up to its
/// matching `}`.
fn braced(text: &str, at: usize) -> &str {
    let mut depth = 1;
    for (i, c) in text[at..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[at..at + i];
                }
            }
            _ => {}
        }
    }
    &text[at..]
}

#[test]
fn verdicts_and_their_consequences_are_decided_in_one_place_each() {
    // Review finding 12: ARCHITECTURE.md said `classify` was the only place that decides
    // retry versus dead letter, but verdicts were built 14 times in stow.rs and 6 in
    // dicom.rs, the worker turned verdicts into other verdicts, the store kept its own copy
    // of the backoff formula for Storage Commitment, and the webhook had a third HTTP table.
    // Now `forward::classify` alone builds verdicts and `store::settle` alone decides what
    // follows (the backoff, the attempt limit, dead letter or drop). A verdict built, or a
    // backoff worked out, anywhere else outside tests fails here, naming the place.
    let appliance = repo().join("appliance");
    let allowed = [
        appliance.join("forward/src/classify.rs"),
        appliance.join("store/src/settle.rs"),
    ];
    let mut all = Vec::new();
    files(&appliance, &mut all);
    let mut offenders = Vec::new();
    for p in all.iter().filter(|p| {
        p.extension().is_some_and(|e| e == "rs")
            && p.components().any(|c| c.as_os_str() == "src")
            && !allowed.contains(p)
    }) {
        let text = std::fs::read_to_string(p).unwrap();
        let code = non_test(&text);
        let line_of = |i: usize| code[..i].lines().count().max(1);
        for call in ["Verdict::retry(", "Verdict::dead(", "Verdict::delivered("] {
            for (i, _) in code.match_indices(call) {
                offenders.push(format!(
                    "{}:{} builds a verdict ({call}..)",
                    p.display(),
                    line_of(i)
                ));
            }
        }
        for variant in ["Retry", "DeadLetter", "Delivered", "Unreachable"] {
            let path = format!("Verdict::{variant} {{");
            for (i, _) in code.match_indices(&path) {
                // A pattern binds fields (`{ reason, .. }`); a literal, or a pattern that
                // rewrites one verdict into another, gives them values.
                if braced(code, i + path.len()).contains(':') {
                    offenders.push(format!(
                        "{}:{} builds or rewrites a verdict (Verdict::{variant} {{ field: .. }})",
                        p.display(),
                        line_of(i)
                    ));
                }
            }
        }
        for formula in [".powi(", "delay_ms("] {
            for (i, _) in code.match_indices(formula) {
                offenders.push(format!(
                    "{}:{} works out a backoff ({formula}..); use store::settle",
                    p.display(),
                    line_of(i)
                ));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// The crates a manifest lists under `[dependencies]` (not dev- or build-dependencies).
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = repo().join("appliance").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(['.', '=', ' '])
            .next()
            .unwrap_or_default()
            .to_string();
        out.push(name);
    }
    out
}

/// Every crate under `appliance/`.
fn crates() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join("appliance"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn crate_dependencies_keep_the_directions_architecture_md_states() {
    // ARCHITECTURE.md states who may know whom; the manifests are where that is true or not.
    // Each rule names its invariant, so a failure says which promise a change breaks.
    let mut broken = Vec::new();
    // `api` does no I/O: only serde, thiserror and the readings' own crates.
    let allowed = ["serde", "thiserror", "health", "ups", "policy"];
    for d in dependencies("api") {
        if !allowed.contains(&d.as_str()) {
            broken.push(format!(
                "api depends on {d}: it does no I/O and knows no component (allowed: {allowed:?})"
            ));
        }
    }
    // `outpost` is the command line: it reaches the appliance through `supervisor` and `api`,
    // and of the components only opens the store itself (import, verify) and asks `scp` which
    // SOP classes it accepts.
    let outpost = dependencies("outpost");
    for needed in ["supervisor", "api"] {
        if !outpost.iter().any(|d| d == needed) {
            broken.push(format!("outpost does not depend on {needed}"));
        }
    }
    for wiring in [
        "forward",
        "health",
        "policy",
        "ups",
        "audit",
        "notify",
        "reqwest",
        "tokio-util",
    ] {
        if outpost.iter().any(|d| d == wiring) {
            broken.push(format!(
                "outpost depends on {wiring}: only supervisor wires components"
            ));
        }
    }
    // Only the faces and the test harness know the supervisor; nothing knows the binary.
    for krate in crates() {
        let deps = dependencies(&krate);
        if deps.iter().any(|d| d == "supervisor") && !["outpost", "testkit"].contains(&&*krate) {
            broken.push(format!(
                "{krate} depends on supervisor: components are wired by it, not the other way round"
            ));
        }
        if deps.iter().any(|d| d == "outpost") {
            broken.push(format!("{krate} depends on the outpost binary"));
        }
    }
    // The listener knows nothing of forwarding; storescu knows nothing of configuration.
    if dependencies("scp").iter().any(|d| d == "forward") {
        broken.push("scp depends on forward".into());
    }
    // Only `web` knows HTTP, and it reaches the appliance only through what the supervisor
    // hands it (`Running::handle`), never the archive or the queue directly.
    for component in [
        "store", "forward", "scp", "storescu", "health", "ups", "policy",
    ] {
        if dependencies("web").iter().any(|d| d == component) {
            broken.push(format!(
                "web depends on {component}: the panel goes through Running::handle"
            ));
        }
    }
    if dependencies("storescu").iter().any(|d| d == "config") {
        broken.push("storescu depends on config: callers pass what it needs".into());
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn only_the_supervisor_wires_components_and_the_control_socket_goes_through_its_handler() {
    // testkit used to start the listener and the forwarder itself, a copy of serve's wiring
    // that drifted; now `supervisor` is the one place that starts them. And the control
    // socket answers through the dispatcher every face shares (`Running::handle`), never
    // with answers of its own.
    let appliance = repo().join("appliance");
    let mut all = Vec::new();
    files(&appliance, &mut all);
    let mut offenders = Vec::new();
    for p in all.iter().filter(|p| {
        p.extension().is_some_and(|e| e == "rs")
            && p.components().any(|c| c.as_os_str() == "src")
            && !p.starts_with(appliance.join("supervisor"))
            // The crates that define what they start.
            && !p.starts_with(appliance.join("scp"))
            && !p.starts_with(appliance.join("forward"))
    }) {
        let text = std::fs::read_to_string(p).unwrap();
        for call in ["scp::run(", "Forwarder::spawn"] {
            if non_test(&text).contains(call) {
                offenders.push(format!("{} calls {call}..)", p.display()));
            }
        }
    }
    let control = std::fs::read_to_string(appliance.join("supervisor/src/control.rs")).unwrap();
    let code = non_test(&control);
    if !code.contains("handler.handle(") {
        offenders.push("supervisor/src/control.rs does not answer through Handler::handle".into());
    }
    if code.contains("Response::") {
        offenders.push(
            "supervisor/src/control.rs builds a Response itself instead of through Running::handle or an ApiError".into(),
        );
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
