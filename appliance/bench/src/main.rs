//! `outpost-bench`: the measuring side of the benchmark scripts in `tests/bench/`.
//!
//! - `populate` fills an archive through the real ingest path (files and index), with small
//!   synthetic instances, as fast as the store takes them; `write-files` writes the same
//!   instances as Part 10 files for the peers;
//!   (`--forward-config` queues them for forwarding too, for a deep outbox);
//! - `open` times opening an archive (the index and start-up repair);
//! - `find` times C-FIND round trips on one open association against a running server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataset::encode::write_element;
use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use rand::Rng;
use store::{Durability, IngestRequest, Store, StoreConfig};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store `instances` synthetic instances: patients of 5 studies x 2 series x 5 images.
    Populate {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        instances: u64,
        /// Concurrent ingests.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// First patient number, to add to an archive populated before.
        #[arg(long, default_value_t = 0)]
        first_patient: u32,
        /// Use full durability instead of relaxed.
        #[arg(long)]
        full: bool,
        /// Queue every instance for forwarding by this configuration's destinations and
        /// rules (to measure ingest with a deep outbox).
        #[arg(long)]
        forward_config: Option<PathBuf>,
        /// Pause these destinations afterwards, so the queue stays as deep when served.
        #[arg(long)]
        pause: Vec<String>,
    },
    /// Write the same synthetic instances `populate` stores, as Part 10 files, for peers.
    WriteFiles {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        instances: u64,
    },
    /// Open the archive and report how long it took.
    Open {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Time study-level C-FINDs by PatientID and by StudyInstanceUID.
    Find {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "OUTPOST")]
        called: String,
        /// Patients in the archive (numbered from 0), to pick query keys from.
        #[arg(long)]
        patients: u32,
        #[arg(long, default_value_t = 500)]
        queries: usize,
    },
}

const PER_PATIENT: u64 = 5 * 2 * 5;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Populate {
            data_dir,
            instances,
            jobs,
            first_patient,
            full,
            forward_config,
            pause,
        } => {
            let mut c = config(data_dir, full);
            if let Some(path) = forward_config {
                let site = config::Config::load(&path).map_err(|p| anyhow::anyhow!("{p}"))?;
                let rules = forward::Rules::new(&site.forward, &site.dicom.remotes)?;
                c.router = Some(std::sync::Arc::new(rules));
            }
            runtime.block_on(populate(c, instances, jobs, first_patient, pause))
        }
        Command::WriteFiles { dir, instances } => {
            std::fs::create_dir_all(&dir)?;
            for n in 0..instances {
                let inst = instance(n, 0);
                let bytes = inst.part10(
                    dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN,
                    Encoding::EXPLICIT_LE,
                );
                std::fs::write(dir.join(format!("{n:08}.dcm")), bytes)?;
            }
            println!("written={instances}");
            Ok(())
        }
        Command::Open { data_dir } => {
            let started = Instant::now();
            let (store, opened) = Store::open(config(data_dir, true))?;
            let elapsed = started.elapsed();
            println!(
                "open_ms={:.1} instances={} repaired={}",
                elapsed.as_secs_f64() * 1e3,
                opened.instances,
                opened.reconciled.finished_indexed + opened.reconciled.incomplete_removed
            );
            drop(store);
            Ok(())
        }
        Command::Find {
            addr,
            called,
            patients,
            queries,
        } => runtime.block_on(find(addr, &called, patients, queries)),
    }
}

fn config(data_dir: PathBuf, full: bool) -> StoreConfig {
    let mut c = StoreConfig::new(data_dir);
    c.min_free_bytes = 0;
    if !full {
        c.durability = Durability::Relaxed {
            flush_interval: Duration::from_millis(1000),
        };
    }
    c
}

fn instance(n: u64, first_patient: u32) -> SynthInstance {
    let p = first_patient + (n / PER_PATIENT) as u32;
    let k = n % PER_PATIENT;
    let (s, r, i) = ((k / 10) as u32, ((k / 5) % 2) as u32, (k % 5) as u32);
    let mut inst = SynthInstance::ct(p, s, r, i);
    inst.rows = 8;
    inst.columns = 8;
    inst.pixel_bytes = 128;
    inst.study_date = format!("20{:02}{:02}{:02}", 10 + p % 16, 1 + s % 12, 1 + p % 28);
    inst
}

async fn populate(
    config: StoreConfig,
    instances: u64,
    jobs: usize,
    first_patient: u32,
    pause: Vec<String>,
) -> anyhow::Result<()> {
    let (store, _) = Store::open(config).context("opening the archive")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for job in 0..jobs as u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = job;
            while n < instances {
                let inst = instance(n, first_patient);
                let mut ingest = store
                    .begin(IngestRequest {
                        sop_class_uid: inst.sop_class.clone(),
                        sop_instance_uid: inst.sop_uid.clone(),
                        transfer_syntax: dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN.into(),
                        source_ae: "BENCH".into(),
                    })
                    .await?;
                ingest.write(inst.dataset(Encoding::EXPLICIT_LE)).await;
                ingest.finish().await?;
                n += jobs as u64;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut last = Instant::now();
    let total = tasks.len();
    for (i, t) in tasks.into_iter().enumerate() {
        t.await??;
        if last.elapsed() > Duration::from_secs(10) || i + 1 == total {
            last = Instant::now();
        }
    }
    let ops = pause
        .into_iter()
        .map(|destination| store::outbox::QueueOp::Pause {
            destination,
            paused: true,
        })
        .collect();
    store.outbox_apply(ops).await?;
    store.close().await?;
    let secs = started.elapsed().as_secs_f64();
    let s = store.stats();
    println!(
        "stored={} seconds={secs:.1} per_second={:.0} flushes_per_instance={:.2} batches={}",
        s.stored,
        s.stored as f64 / secs,
        s.flushes_per_instance(),
        s.batches
    );
    Ok(())
}

async fn find(
    addr: std::net::SocketAddr,
    called: &str,
    patients: u32,
    queries: usize,
) -> anyhow::Result<()> {
    let mut scu = testkit::Scu::connect(
        addr,
        "BENCH",
        called,
        &[(dimse::STUDY_ROOT_FIND, &[testkit::IMPLICIT_LE])],
        &[],
    )
    .await
    .context("association")?;
    let mut rng = rand::rng();
    let enc = Encoding::IMPLICIT_LE;
    for (name, by_uid) in [("PatientID", false), ("StudyInstanceUID", true)] {
        let mut times = Vec::with_capacity(queries);
        for _ in 0..queries {
            let p: u32 = rng.random_range(0..patients);
            let s: u32 = rng.random_range(0..5);
            let inst = SynthInstance::ct(p, s, 0, 0);
            let mut q = Vec::new();
            write_element(&mut q, enc, tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY ");
            write_element(&mut q, enc, tags::PATIENT_NAME, Vr::PN, b"");
            if by_uid {
                write_element(&mut q, enc, tags::PATIENT_ID, Vr::LO, b"");
                write_element(
                    &mut q,
                    enc,
                    tags::STUDY_INSTANCE_UID,
                    Vr::UI,
                    inst.study_uid.as_bytes(),
                );
            } else {
                write_element(
                    &mut q,
                    enc,
                    tags::PATIENT_ID,
                    Vr::LO,
                    inst.patient_id.as_bytes(),
                );
                write_element(&mut q, enc, tags::STUDY_INSTANCE_UID, Vr::UI, b"");
            }
            write_element(&mut q, enc, tags::STUDY_DATE, Vr::DA, b"");
            write_element(
                &mut q,
                enc,
                tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
                Vr::IS,
                b"",
            );
            write_element(&mut q, enc, tags::MODALITIES_IN_STUDY, Vr::CS, b"");
            let started = Instant::now();
            let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await?;
            times.push(started.elapsed());
            anyhow::ensure!(
                last.status == Some(dimse::Status::SUCCESS),
                "query failed: {last:?}"
            );
            let expected = if by_uid { 1 } else { 5 };
            anyhow::ensure!(
                matches.len() == expected,
                "{name} query for patient {p} found {} studies",
                matches.len()
            );
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "by={name} queries={queries} median_ms={:.3} p90_ms={:.3} max_ms={:.3}",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
            ms(times[times.len() - 1])
        );
    }
    scu.release().await?;
    Ok(())
}
