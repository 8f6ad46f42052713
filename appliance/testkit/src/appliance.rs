//! A whole appliance (store, audit trail, DICOM listener, forwarding) in a temporary directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running appliance. Dropping it stops nothing cleanly; call [`Appliance::stop`].
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub store: store::Store,
    pub config: config::Config,
    pub audit_path: PathBuf,
    shutdown: CancellationToken,
    forwarding: CancellationToken,
    /// Running when the configuration has `[[forward.destination]]`s.
    pub forwarder: Option<forward::Forwarder>,
    task: Option<JoinHandle<scp::Stopped>>,
    audit: audit::Audit,
}

impl Appliance {
    /// Starts an appliance from configuration text. `data_dir` and the audit path are set to
    /// a fresh temporary directory; ports given in the text are ignored (127.0.0.1:0 is used).
    pub async fn start(config_toml: &str) -> Appliance {
        let dir = tempfile::tempdir().expect("temporary directory");
        Appliance::start_in(dir, config_toml).await
    }

    /// Like [`Appliance::start`], letting `adjust` change the store's configuration after it
    /// is derived from the text (for settings tests cannot express in TOML, such as a free
    /// space floor no disk meets).
    pub async fn start_with(
        config_toml: &str,
        adjust: impl FnOnce(&mut store::StoreConfig),
    ) -> Appliance {
        let dir = tempfile::tempdir().expect("temporary directory");
        Appliance::start_in_with(dir, config_toml, adjust).await
    }

    /// Like [`Appliance::start`], in an existing directory (to restart on the same data).
    pub async fn start_in(dir: tempfile::TempDir, config_toml: &str) -> Appliance {
        Appliance::start_in_with(dir, config_toml, |_| {}).await
    }

    /// [`Appliance::start_in`] and [`Appliance::start_with`] together.
    pub async fn start_in_with(
        dir: tempfile::TempDir,
        config_toml: &str,
        adjust: impl FnOnce(&mut store::StoreConfig),
    ) -> Appliance {
        Appliance::launch(dir, config_toml, 0, forward::Clock::System, adjust).await
    }

    /// Everything at once: the directory, the configuration, the plain DICOM port (0 for
    /// any; a fixed one lets a test stop and restart a forwarding destination where its
    /// sender expects it), the forwarder's clock, and a change to the store's settings.
    /// Forwarding runs when the configuration has destinations.
    pub async fn launch(
        dir: tempfile::TempDir,
        config_toml: &str,
        port: u16,
        clock: forward::Clock,
        adjust: impl FnOnce(&mut store::StoreConfig),
    ) -> Appliance {
        let mut config =
            config::Config::parse(config_toml, "test config").unwrap_or_else(|p| panic!("{p}"));
        config.storage.data_dir = dir.path().join("data");
        config.storage.min_free_bytes = 0;
        config.audit.path = dir.path().join("audit.jsonl");
        let mut store_config = store::StoreConfig::new(&config.storage.data_dir);
        store_config.min_free_bytes = 0;
        store_config.duplicates = match config.storage.duplicates {
            config::Duplicates::KeepFirst => store::DuplicatePolicy::KeepFirst,
            config::Duplicates::Overwrite => store::DuplicatePolicy::Overwrite,
        };
        store_config.durability = match config.storage.durability {
            config::Durability::Full => store::Durability::Full,
            config::Durability::Relaxed { flush_interval } => {
                store::Durability::Relaxed { flush_interval }
            }
        };
        if !config.forward.destinations.is_empty() {
            let rules = forward::Rules::new(&config.forward, &config.dicom.remotes)
                .expect("routing rules are valid");
            store_config.router = Some(Arc::new(rules));
        }
        store_config.cache = Some(store::CacheConfig {
            high_watermark: config.storage.high_watermark,
            low_watermark: config.storage.low_watermark,
            capacity_bytes: config.storage.capacity_bytes,
            // Tests evict what they stored a moment ago; the guard is tested in the store.
            protect_recent_s: 0,
        });
        let audit = audit::Audit::open_with(
            &config.audit.path,
            audit::AuditConfig {
                rotate_bytes: config.audit.rotate_bytes,
                retention_days: config.audit.retention_days,
                max_bytes: Some(config.audit.max_bytes),
                rejections_per_window: config.audit.rejections_per_minute,
                window: std::time::Duration::from_secs(60),
            },
        )
        .expect("audit trail opens");
        store_config.other_bytes = Some(audit.bytes_counter());
        adjust(&mut store_config);
        let (store, _) = store::Store::open(store_config).expect("store opens");
        let plain = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = plain.local_addr().expect("local addr");
        let (tls_listener, tls) = match &config.dicom.tls {
            Some(t) => {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS");
                (
                    Some(l),
                    Some(scp::tls::load(t).expect("TLS configuration loads")),
                )
            }
            None => (None, None),
        };
        let tls_addr = tls_listener
            .as_ref()
            .map(|l| l.local_addr().expect("local addr"));
        if let Some(t) = config.dicom.tls.as_mut() {
            t.port = tls_addr.expect("bound").port();
        }
        config.dicom.port = addr.port();
        let settings = forward::Settings::from_dicom(&config.dicom);
        let recall =
            forward::Recaller::from_config(&config.forward, &settings).expect("recall sets up");
        let services = Arc::new(scp::Services {
            config: config.dicom.clone(),
            store: store.clone(),
            audit: audit.clone(),
            tls,
            recall,
            reporters: forward::reporters(&config.forward, &config.dicom.remotes),
        });
        let shutdown = CancellationToken::new();
        let forwarding = CancellationToken::new();
        let forwarder = (!config.forward.destinations.is_empty()).then(|| {
            forward::Forwarder::spawn_with_clock(
                store.clone(),
                &config.forward,
                settings,
                forwarding.clone(),
                clock,
            )
            .expect("forwarding starts")
        });
        let task = tokio::spawn(scp::run(
            scp::Listeners {
                plain,
                tls: tls_listener,
            },
            services,
            shutdown.clone(),
        ));
        Appliance {
            audit_path: config.audit.path.clone(),
            dir,
            addr,
            tls_addr,
            store,
            config,
            shutdown,
            forwarding,
            forwarder,
            task: Some(task),
            audit,
        }
    }

    /// Stops the listener (with its grace period) and the index writer, and returns the
    /// directory so the same data can be reopened.
    pub async fn stop(mut self) -> (tempfile::TempDir, scp::Stopped) {
        self.shutdown.cancel();
        let stopped = self
            .task
            .take()
            .expect("running")
            .await
            .expect("listener task");
        self.forwarding.cancel();
        if let Some(f) = self.forwarder.take() {
            f.wait(std::time::Duration::from_secs(10)).await;
        }
        self.store.close().await.expect("store closes");
        self.audit.close();
        (self.dir, stopped)
    }

    /// The data set bytes this appliance holds for an instance, read from its file; `None`
    /// when it holds none (or only its index entry, evicted).
    pub fn stored_dataset(&self, sop_instance_uid: &str) -> Option<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let q = store::query::Identifier {
            level: store::query::Level::Image,
            charset: dataset::charset::Charset::Default,
            keys: vec![dataset::Element {
                tag: dataset::tags::SOP_INSTANCE_UID,
                vr: dataset::Vr::UI,
                value: sop_instance_uid.as_bytes().to_vec(),
            }],
        };
        let found = self
            .store
            .resolve(store::query::Model::StudyRoot, &q)
            .ok()?;
        let item = found.into_iter().next()?;
        let mut f = self.store.open_file(&item.file).ok()?;
        f.seek(SeekFrom::Start(item.dataset_offset)).ok()?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// The audit trail's lines so far, parsed.
    pub fn audit_lines(&self) -> Vec<String> {
        self.audit.close();
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
