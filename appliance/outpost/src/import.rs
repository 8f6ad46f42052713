//! `outpost import DIR`: every file under a folder goes through the same ingest path as a
//! C-STORE (same checks, same durability, same duplicate policy), several at a time so they
//! share group commits, with a progress bar and a summary.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use dataset::meta::read_file_meta;
use store::{IngestRequest, Outcome, Store};
use tokio::sync::Semaphore;

use crate::store_config;

/// What happened to one file.
enum Imported {
    Stored,
    Duplicate,
    Rejected(String),
}

pub fn import(c: config::Config, dir: &Path, jobs: usize) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(c, dir, jobs.max(1)))
}

async fn run(c: config::Config, dir: &Path, jobs: usize) -> anyhow::Result<ExitCode> {
    let files = list(dir).with_context(|| format!("listing {}", dir.display()))?;
    let (store, _) = store::Store::open(store_config(&c)?)
        .with_context(|| format!("opening the archive in {}", c.storage.data_dir.display()))?;
    let accept_unknown = c.dicom.accept_unknown_sop_classes;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "importing {bar:40} {pos}/{len} files ({per_sec}, {eta} left)",
        )
        .expect("valid template"),
    );
    let slots = Arc::new(Semaphore::new(jobs));
    let mut tasks = Vec::with_capacity(files.len());
    for path in files {
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let (store, bar) = (store.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let result = import_one(&store, &path, accept_unknown).await;
            bar.inc(1);
            drop(permit);
            (path, result)
        }));
    }
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut rejected: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for t in tasks {
        let (path, result) = t.await.context("an import task failed")?;
        match result {
            Imported::Stored => stored += 1,
            Imported::Duplicate => duplicates += 1,
            Imported::Rejected(why) => rejected.entry(why).or_default().push(path),
        }
    }
    bar.finish_and_clear();
    store.close().await.context("flushing the archive")?;
    let n_rejected: usize = rejected.values().map(Vec::len).sum();
    println!("{stored} stored, {duplicates} duplicate, {n_rejected} rejected");
    for (why, paths) in &rejected {
        println!("rejected ({}): {why}", paths.len());
        for p in paths.iter().take(5) {
            println!("  {}", p.display());
        }
        if paths.len() > 5 {
            println!("  ... and {} more", paths.len() - 5);
        }
    }
    Ok(if n_rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every regular file under `dir`, sorted, so imports are reproducible.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn import_one(store: &Store, path: &Path, accept_unknown: bool) -> Imported {
    let opened = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut file = std::io::BufReader::new(std::fs::File::open(&path)?);
            let meta =
                read_file_meta(&mut file).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>((file, meta))
        })
        .await
        .expect("open task panicked")
    };
    let (mut file, meta) = match opened {
        Ok(x) => x,
        Err(e) => return Imported::Rejected(e.to_string()),
    };
    let sop_class = dataset::ts::trim_uid(&meta.sop_class_uid).to_string();
    if !scp::is_storage_class(&sop_class, accept_unknown) {
        return Imported::Rejected(format!(
            "SOP class {sop_class} is not a storage SOP class this archive accepts"
        ));
    }
    let request = IngestRequest {
        sop_class_uid: sop_class,
        sop_instance_uid: meta.sop_instance_uid.clone(),
        transfer_syntax: meta.transfer_syntax.clone(),
        source_ae: meta.source_ae_title.clone().unwrap_or_default(),
    };
    let mut ingest = match store.begin(request).await {
        Ok(i) => i,
        Err(e) => return Imported::Rejected(e.to_string()),
    };
    loop {
        let (f, chunk) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let r = file.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (file, r)
        })
        .await
        .expect("read task panicked");
        file = f;
        match chunk {
            Ok(bytes) if bytes.is_empty() => break,
            Ok(bytes) => ingest.write(bytes).await,
            Err(e) => {
                ingest.discard().await;
                return Imported::Rejected(format!("read error: {e}"));
            }
        }
    }
    match ingest.finish().await {
        Ok(r) if r.outcome == Outcome::Duplicate => Imported::Duplicate,
        Ok(_) => Imported::Stored,
        Err(e) => Imported::Rejected(e.to_string()),
    }
}
