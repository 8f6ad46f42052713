//! A whole appliance in a temporary directory: the real supervisor (store, audit trail, DICOM
//! listener, forwarding, hardware monitors and policy, cache upkeep, control socket), not a
//! copy of its wiring.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

/// A running appliance: the real [`supervisor::Supervisor`] on `127.0.0.1`, in a temporary
/// directory. Dropping it stops nothing cleanly; call [`Appliance::stop`].
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub store: store::Store,
    pub config: config::Config,
    pub audit_path: PathBuf,
    running: Option<supervisor::Running>,
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
        adjust: impl FnOnce(&mut store::StoreConfig) + Send + 'static,
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
        adjust: impl FnOnce(&mut store::StoreConfig) + Send + 'static,
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
        adjust: impl FnOnce(&mut store::StoreConfig) + Send + 'static,
    ) -> Appliance {
        let mut config =
            config::Config::parse(config_toml, "test config").unwrap_or_else(|p| panic!("{p}"));
        config.storage.data_dir = dir.path().join("data");
        config.storage.min_free_bytes = 0;
        config.audit.path = dir.path().join("audit.jsonl");
        // The monitors run, on sources in the directory (`hw/mdstat`, which a test may
        // rewrite): no md arrays and no SMART reports to begin with, so the machine the tests
        // run on cannot hold ingest.
        let hw = dir.path().join("hw");
        std::fs::create_dir_all(hw.join("sys-block")).expect("hardware fixture directory");
        std::fs::write(
            hw.join("mdstat"),
            "Personalities : \nunused devices: <none>\n",
        )
        .expect("mdstat fixture");
        config.health.mdstat = hw.join("mdstat");
        config.health.sysfs_block = hw.join("sys-block");
        config.health.helper_dir = hw.join("helper");
        if config.health.data_arrays.is_none() {
            config.health.data_arrays = Some(Vec::new());
        }
        let plain = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = plain.local_addr().expect("local addr");
        config.dicom.port = addr.port();
        let tls = match config.dicom.tls.as_mut() {
            Some(t) => {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS");
                t.port = l.local_addr().expect("local addr").port();
                Some(l)
            }
            None => None,
        };
        // The panel as well, on its own ephemeral port; its self-signed certificate is made
        // under the data directory like on a real box.
        let web = if config.web.enabled {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind web");
            config.web.listen = l.local_addr().expect("local addr");
            Some(l)
        } else {
            None
        };
        let options = supervisor::Options {
            clock,
            adjust_store: Some(Box::new(move |s: &mut store::StoreConfig| {
                s.min_free_bytes = 0;
                if let Some(c) = s.cache.as_mut() {
                    // Tests evict what they stored a moment ago; the guard is tested in the
                    // store.
                    c.protect_recent_s = 0;
                }
                adjust(s);
            })),
        };
        let running = supervisor::Supervisor::start_with(
            config.clone(),
            supervisor::Bound {
                dicom: plain,
                tls,
                web,
            },
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("the appliance starts: {e:?}"));
        Appliance {
            audit_path: config.audit.path.clone(),
            dir,
            addr,
            tls_addr: running.tls_addr(),
            store: running.store().clone(),
            config,
            running: Some(running),
        }
    }

    /// The running supervisor: [`supervisor::Running::handle`] answers API requests as the
    /// control socket does.
    pub fn running(&self) -> &supervisor::Running {
        self.running.as_ref().expect("running")
    }

    /// Forwarding, when the configuration has `[[forward.destination]]`s.
    pub fn forwarder(&self) -> Option<&forward::Forwarder> {
        self.running().forwarder()
    }

    /// Stops the appliance as SIGTERM does (the listener's grace period, then forwarding,
    /// the monitors and the index writer's final flush), and returns the directory so the
    /// same data can be reopened.
    pub async fn stop(mut self) -> (tempfile::TempDir, scp::Stopped) {
        let running = self.running.take().expect("running");
        let deadline = self.config.dicom.shutdown_grace + std::time::Duration::from_secs(15);
        let stopped = running
            .stop(supervisor::StopReason::Signal("SIGTERM"), deadline)
            .await;
        assert!(
            stopped.clean,
            "the archive did not close cleanly: {stopped:?}"
        );
        (self.dir, stopped.listener)
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
        self.running().audit().close();
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
