//! Repository rules checked by `cargo test`: every Rust file says what it is for in a `//!`
//! line, and no committed file names a package registry host or mirror.

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
