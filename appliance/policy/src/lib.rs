//! The one place that turns hardware readings into actions: which alerts are active, whether
//! the archive may take new instances, whether routine forwarding waits, whether to flush now,
//! and when to power off.
//!
//! [`Policy::evaluate`] is a pure function of the latest readings and the time (plus the
//! policy's memory of what it saw before), so every rule is tested without hardware, clocks or
//! a network. The caller samples the hardware and carries out the [`Decision`].
//!
//! The rules, in words:
//! - On battery: keep accepting studies, raise an alert, checkpoint the index at once, and
//!   hold routine forwarding while an upstream link is also down.
//! - On battery with less runtime left than the threshold, or with the UPS signalling low
//!   battery: power off in order (once).
//! - UPS readings count once they held for the debounce period, in both directions, so a
//!   flickering input (readings that go back and forth) neither raises alerts nor powers the
//!   box off. A UPS whose last word before falling silent was "on battery" is taken to be on
//!   battery still, as NUT's upsmon takes a UPS on battery it can no longer reach: its runtime
//!   runs down from the last reading, and the appliance powers off when that estimate reaches
//!   the threshold, or after the debounce when the UPS had signalled low battery or never
//!   told its runtime. (Mains failing often takes the network switch to the UPS card with
//!   it, so the silence may come within seconds of the outage.)
//! - RAID degraded or rebuilding, a SMART failure prediction, a nearly full volume: alert and
//!   keep running.
//! - An array holding the archive failed, or the data volume read-only: refuse new instances
//!   rather than risk losing them; queries and retrievals go on. Other failed arrays alert.
//! - A sync on the data volume that has waited [`SYNC_STALL`] or longer (a failing disk, a
//!   hung link): alert, naming the disks with writes still in flight, and refuse new
//!   instances until it returns, since every new one would wait on the same disk.
//! - A monitor that cannot read its source keeps its alerts as they were: an unreadable array
//!   is no repaired array. A condition that gets worse is announced again.
//!
//! Debouncing runs on a monotonic clock, so a wall-clock step (NTP setting the time after a
//! boot) neither delays a power-off nor skips a debounce; alerts are dated by the wall clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use health::raid::{Array, RaidHealth};
use health::smart::{Device, Verdict};
use health::volume::Volume;
use serde::{Deserialize, Serialize};
use ups::{Reading, UpsState};

/// What the policy is told once, at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Power off when less runtime than this remains on battery.
    pub shutdown_below: Duration,
    /// How long a UPS reading must hold before it counts.
    pub debounce: Duration,
    /// Physical labels of disks, such as `sdb` -> "bay 2", for alert sentences.
    pub bays: Vec<(String, String)>,
    /// The archive's free-space floor (new instances are refused below it).
    pub min_free_bytes: u64,
    pub min_free_inodes_percent: f64,
    /// The md arrays the archive's data volume lives on: only their failure refuses new
    /// instances, and a listed array that is not running counts as failed. `["*"]` means
    /// every array (when it is not known which ones hold the volume).
    pub data_arrays: Vec<String>,
    /// The disks at the bottom of the data volume's stack, such as `sda`, for naming them
    /// when a sync hangs; empty when unknown.
    pub data_disks: Vec<String>,
}

/// A sync this old is a hung disk, not a slow one: the kernel's own SCSI command timeout is
/// 30 s, after which it starts resetting the link, and a healthy disk (even a RAID resyncing
/// under load) answers an fdatasync within seconds.
pub const SYNC_STALL: Duration = Duration::from_secs(30);

/// The sync that has waited longest on the data volume, while one runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWait {
    pub waited: Duration,
    /// What it makes durable, such as "fdatasync of /var/lib/outpost/tmp/1.2.3".
    pub operation: String,
    /// Of [`Settings::data_disks`], those with write requests still in flight; empty when
    /// none could be read.
    pub busy_disks: Vec<String>,
}

/// The time of an evaluation, on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on a clock that never steps (debouncing).
    pub monotonic_ms: u64,
    /// Unix milliseconds (dating alerts).
    pub unix_ms: u64,
}

/// The latest reading of each monitor; `None` until it first reported. An `Err` is the
/// monitor's own failure to read its source, in words.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    pub raid: Option<Result<Vec<Array>, String>>,
    pub volume: Option<Result<Volume, String>>,
    pub smart: Option<Result<Vec<Device>, String>>,
    pub ups: Option<Reading>,
    /// The UPS as people know it, such as "APC Smart-UPS SMT/SRT at 10.0.0.5:502 unit 1".
    pub ups_name: String,
    /// Forwarding destinations that are not answering.
    pub links_down: Vec<String>,
    /// The store's oldest running sync, read at every evaluation.
    pub disk_wait: Option<DiskWait>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One condition a person should know about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable identity, such as `raid.md0` or `ups.on_battery`.
    pub key: String,
    pub severity: Severity,
    /// A sentence a technician can act on.
    pub message: String,
    /// Unix seconds when the condition was first seen.
    pub since: u64,
}

/// What to do after one evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Alerts that became active now.
    pub raised: Vec<Alert>,
    /// Alerts whose condition is over.
    pub cleared: Vec<Alert>,
    /// Every active alert, worst first.
    pub active: Vec<Alert>,
    /// Refuse new instances, with the reason.
    pub hold_ingest: Option<String>,
    /// Destinations whose routine (below high priority) forwarding waits: those found down
    /// while on battery, until mains returns.
    pub hold_forwarding: Vec<String>,
    /// Make everything acknowledged durable now.
    pub checkpoint: bool,
    /// Begin the orderly power-off, with the reason; given once.
    pub power_off: Option<String>,
}

/// The alert of a hung sync on the data volume.
pub const SYNC_STALLED: &str = "volume.sync_stalled";

/// A condition found in the readings, before debouncing.
struct Candidate {
    key: String,
    severity: Severity,
    /// Readings that flicker (the UPS) count only once they held for the debounce period.
    debounced: bool,
    /// The sentence; `{at}` is replaced by the local time the condition began.
    template: String,
}

/// The policy's memory between evaluations.
pub struct Policy {
    settings: Settings,
    active: BTreeMap<String, Alert>,
    /// Debounced conditions seen but not yet held long enough: key -> when first seen.
    rising: HashMap<String, Now>,
    /// Debounced active alerts whose condition is absent: key -> first absent (monotonic ms).
    falling: HashMap<String, u64>,
    powered_off: bool,
    /// The last reading taken on battery, kept until mains is back for good.
    last_on_battery: Option<OnBattery>,
    /// Destinations found down while on battery.
    battery_held: BTreeSet<String>,
}

/// What the UPS last said on battery.
#[derive(Clone, Copy, Debug)]
struct OnBattery {
    runtime_s: Option<u32>,
    /// The UPS signalled low battery.
    low: bool,
    /// When (monotonic ms).
    at: u64,
}

const ON_BATTERY: &str = "ups.on_battery";
const POWER_OFF: &str = "ups.power_off";

impl Policy {
    pub fn new(settings: Settings) -> Policy {
        Policy {
            settings,
            active: BTreeMap::new(),
            rising: HashMap::new(),
            falling: HashMap::new(),
            powered_off: false,
            last_on_battery: None,
            battery_held: BTreeSet::new(),
        }
    }

    /// Evaluates the latest readings at `now`.
    pub fn evaluate(&mut self, r: &Readings, now: Now) -> Decision {
        match &r.ups {
            Some(u) if matches!(u.state, UpsState::OnBattery | UpsState::LowBattery) => {
                self.last_on_battery = Some(OnBattery {
                    runtime_s: u.runtime_s,
                    low: u.state == UpsState::LowBattery,
                    at: now.monotonic_ms,
                });
            }
            // One reading on mains in the middle of an outage is not the end of it: what the
            // UPS said on battery is forgotten only when mains is read with no outage active
            // or pending, so a silence right after the blip is still judged by it.
            Some(u)
                if u.state == UpsState::Online
                    && !self.active.contains_key(ON_BATTERY)
                    && !self.rising.contains_key(ON_BATTERY) =>
            {
                self.last_on_battery = None;
            }
            _ => {}
        }
        let mut found = Vec::new();
        self.ups_conditions(r, now, &mut found);
        self.raid_conditions(r, &mut found);
        self.volume_conditions(r, &mut found);
        self.smart_conditions(r, &mut found);
        self.sync_conditions(r, &mut found);

        let mut decision = Decision::default();
        let debounce_ms = self.settings.debounce.as_millis() as u64;
        let present: std::collections::HashSet<String> =
            found.iter().map(|c| c.key.clone()).collect();
        self.rising.retain(|k, _| present.contains(k));
        for c in found {
            self.falling.remove(&c.key);
            if let Some(a) = self.active.get_mut(&c.key) {
                if c.severity > a.severity {
                    // Worse than before (degraded to failed, wear to failing): announced
                    // again, dated now.
                    a.severity = c.severity;
                    a.since = now.unix_ms / 1000;
                    a.message = fill(&c.template, a.since);
                    decision.raised.push(a.clone());
                } else {
                    a.severity = c.severity;
                    a.message = fill(&c.template, a.since);
                }
                continue;
            }
            let first = if c.debounced {
                *self.rising.entry(c.key.clone()).or_insert(now)
            } else {
                now
            };
            if c.debounced && now.monotonic_ms.saturating_sub(first.monotonic_ms) < debounce_ms {
                continue;
            }
            self.rising.remove(&c.key);
            let since = first.unix_ms / 1000;
            let alert = Alert {
                message: fill(&c.template, since),
                key: c.key.clone(),
                severity: c.severity,
                since,
            };
            self.active.insert(c.key, alert.clone());
            decision.raised.push(alert);
        }
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            let debounced = key.starts_with("ups.");
            let first = if debounced {
                *self.falling.entry(key.clone()).or_insert(now.monotonic_ms)
            } else {
                now.monotonic_ms
            };
            if debounced && now.monotonic_ms.saturating_sub(first) < debounce_ms {
                continue;
            }
            self.falling.remove(&key);
            if let Some(a) = self.active.remove(&key) {
                decision.cleared.push(a);
            }
        }

        let on_battery = self.active.contains_key(ON_BATTERY);
        decision.checkpoint = decision
            .raised
            .iter()
            .any(|a| a.key == ON_BATTERY && a.severity == Severity::Warning);
        // A destination found down on battery keeps only urgent work until mains returns,
        // also once its link is back: the battery's runtime goes to what matters first.
        if on_battery {
            self.battery_held.extend(r.links_down.iter().cloned());
        } else {
            self.battery_held.clear();
        }
        decision.hold_forwarding = self.battery_held.iter().cloned().collect();
        decision.hold_ingest = self
            .active
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("raid.")
                    .is_some_and(|md| self.holds_archive(md))
                    || *k == "volume.read_only"
                    || *k == SYNC_STALLED
            })
            .find(|(_, a)| a.severity == Severity::Critical)
            .map(|(_, a)| a.message.clone());
        if self.active.contains_key(POWER_OFF) && !self.powered_off {
            self.powered_off = true;
            decision.power_off = Some(
                self.power_off_reason(r, now)
                    .unwrap_or_else(|| "the UPS battery is running out".into()),
            );
        }
        decision.active = self.active.values().cloned().collect();
        decision
            .active
            .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.since.cmp(&b.since)));
        decision
    }

    /// Why the appliance must power off now, if it must: on battery with the UPS signalling
    /// low battery or less runtime left than the threshold; or blind (the UPS stopped
    /// answering) on battery, with the last runtime run down below the threshold or never
    /// known.
    fn power_off_reason(&self, r: &Readings, now: Now) -> Option<String> {
        let u = r.ups.as_ref()?;
        let threshold = self.settings.shutdown_below;
        if u.state != UpsState::CommunicationLost {
            return power_off_reason(u, threshold);
        }
        let last = self.last_on_battery?;
        if last.low {
            return Some("the UPS signalled low battery, then stopped answering".into());
        }
        let Some(runtime) = last.runtime_s else {
            return Some(
                "the UPS stopped answering while on battery, and its runtime was never known"
                    .into(),
            );
        };
        let elapsed = Duration::from_millis(now.monotonic_ms.saturating_sub(last.at));
        let left = Duration::from_secs(u64::from(runtime)).saturating_sub(elapsed);
        // `<=`: with a threshold of 0 the estimate running out is still a power-off.
        (left <= threshold).then(|| {
            format!(
                "the UPS stopped answering while on battery; by its last reading about {} of runtime is left, below the {} threshold",
                span(left),
                span(threshold)
            )
        })
    }

    fn ups_conditions(&self, r: &Readings, now: Now, out: &mut Vec<Candidate>) {
        let Some(u) = &r.ups else { return };
        let threshold = self.settings.shutdown_below;
        let runtime = u.runtime_s.map(|s| Duration::from_secs(u64::from(s)));
        let left = runtime
            .map(|d| format!("{} left", span(d)))
            .unwrap_or_else(|| "runtime unknown".into());
        let charge = u
            .charge_pct
            .map(|c| format!(", {c:.0} % charged"))
            .unwrap_or_default();
        let battery = matches!(u.state, UpsState::OnBattery | UpsState::LowBattery);
        if battery {
            out.push(Candidate {
                key: ON_BATTERY.into(),
                severity: Severity::Warning,
                debounced: true,
                template: format!(
                    "Mains power lost at {{at}}: running on the UPS battery ({left}{charge}). Studies are still accepted; the appliance powers off cleanly when less than {} remains.",
                    span(threshold)
                ),
            });
        }
        if (battery || u.state == UpsState::CommunicationLost)
            && let Some(why) = self.power_off_reason(r, now)
        {
            out.push(Candidate {
                key: POWER_OFF.into(),
                severity: Severity::Critical,
                debounced: true,
                template: format!(
                    "Powering off at {{at}}: {why}. Running associations finish, everything is flushed, and the UPS is told to cut and later restore power, so the appliance starts again when mains returns."
                ),
            });
        }
        if u.state == UpsState::CommunicationLost {
            // Blind on battery is still on battery: keep that alert (and its hold) until
            // the UPS says otherwise. The same goes for what it said of its battery.
            if let Some(a) = self.active.get("ups.replace_battery") {
                out.push(keep(a));
            }
            if self.last_on_battery.is_some() {
                out.push(Candidate {
                    key: ON_BATTERY.into(),
                    severity: Severity::Warning,
                    debounced: true,
                    template: "Mains power lost at {at}: running on the UPS battery; the UPS stopped answering, so the remaining runtime is unknown.".into(),
                });
            }
            out.push(Candidate {
                key: "ups.communication".into(),
                severity: Severity::Warning,
                debounced: true,
                template: format!(
                    "The UPS ({}) has not answered since {{at}}: {}. Check its network card or serial cable; until it answers, a power cut is judged by the UPS's last reading.",
                    r.ups_name,
                    u.error.as_deref().unwrap_or("no answer")
                ),
            });
        }
        if u.replace_battery {
            out.push(Candidate {
                key: "ups.replace_battery".into(),
                severity: Severity::Warning,
                debounced: true,
                template: format!(
                    "The UPS ({}) reports since {{at}} that its battery needs replacing: runtime on a power cut will be short.",
                    r.ups_name
                ),
            });
        }
    }

    fn raid_conditions(&self, r: &Readings, out: &mut Vec<Candidate>) {
        match &r.raid {
            None => {}
            Some(Err(e)) => self.unreadable("raid", "The RAID arrays", e, out),
            Some(Ok(arrays)) => {
                for name in &self.settings.data_arrays {
                    if name != "*" && !arrays.iter().any(|a| &a.name == name) {
                        out.push(Candidate {
                            key: format!("raid.{name}"),
                            severity: Severity::Critical,
                            debounced: false,
                            template: format!(
                                "RAID {name}, which holds the archive, is not running since {{at}} (it is not in /proc/mdstat). New studies are refused until it is assembled again; check the disks and `mdadm --assemble --scan`."
                            ),
                        });
                    }
                }
                for a in arrays {
                    let problem = a
                        .describe_problem()
                        .unwrap_or_else(|| "no detail".to_string());
                    let level = a.level.as_deref().unwrap_or("md");
                    let (severity, template) = match a.health {
                        RaidHealth::Ok => continue,
                        // Recovering onto a spare means a member is missing: one more
                        // failure loses the array. A resync with every member is routine.
                        RaidHealth::Rebuilding => (
                            if a.degraded.unwrap_or(0) > 0 {
                                Severity::Warning
                            } else {
                                Severity::Info
                            },
                            format!(
                                "RAID {} ({level}) rebuilding since {{at}}: {problem}. The array is not redundant until it finishes.",
                                a.name
                            ),
                        ),
                        RaidHealth::Degraded => (
                            Severity::Warning,
                            format!(
                                "RAID {} ({level}) degraded at {{at}}: {problem}; {}",
                                a.name,
                                self.replacement(a)
                            ),
                        ),
                        RaidHealth::Failed if self.holds_archive(&a.name) => (
                            Severity::Critical,
                            format!(
                                "RAID {} ({level}) failed at {{at}}: {problem}. New studies are refused until the array is repaired; stored studies stay readable where the remaining disks allow. {}",
                                a.name,
                                self.replacement(a)
                            ),
                        ),
                        RaidHealth::Failed => (
                            Severity::Critical,
                            format!(
                                "RAID {} ({level}) failed at {{at}}: {problem}. It does not hold the archive, so studies are still accepted. {}",
                                a.name,
                                self.replacement(a)
                            ),
                        ),
                    };
                    out.push(Candidate {
                        key: format!("raid.{}", a.name),
                        severity,
                        debounced: false,
                        template,
                    });
                }
            }
        }
    }

    /// What a technician should do about an array's failed members.
    fn replacement(&self, a: &Array) -> String {
        let failed = a.failed_members();
        if failed.is_empty() {
            return format!(
                "add a disk to the array (mdadm --manage /dev/{} --add /dev/<disk>).",
                a.name
            );
        }
        let disks: Vec<String> = failed
            .iter()
            .map(|m| match self.bay(&m.device) {
                Some(bay) => format!("{} in {bay}", m.device),
                None => m.device.clone(),
            })
            .collect();
        format!(
            "replace the disk of {} and add the new one (mdadm --manage /dev/{} --add /dev/<disk>).",
            disks.join(" and "),
            a.name
        )
    }

    /// The physical label of a disk or of the disk a partition is on (`sdb1` -> `sdb`,
    /// `nvme0n1p2` -> `nvme0n1`).
    fn bay(&self, device: &str) -> Option<&str> {
        let disk = disk_of(device);
        self.settings
            .bays
            .iter()
            .find(|(d, _)| d == device || d == disk)
            .map(|(_, bay)| bay.as_str())
    }

    fn sync_conditions(&self, r: &Readings, out: &mut Vec<Candidate>) {
        let Some(w) = &r.disk_wait else { return };
        if w.waited < SYNC_STALL {
            return;
        }
        let label = |d: &String| match self.bay(d) {
            Some(bay) => format!("{d} ({bay})"),
            None => d.clone(),
        };
        let who = if !w.busy_disks.is_empty() {
            let list: Vec<String> = w.busy_disks.iter().map(label).collect();
            format!("Disk {} of the data volume", list.join(" and "))
        } else if !self.settings.data_disks.is_empty() {
            let list: Vec<String> = self.settings.data_disks.iter().map(label).collect();
            format!("A disk of the data volume ({})", list.join(", "))
        } else {
            "A disk of the data volume".to_string()
        };
        out.push(Candidate {
            key: SYNC_STALLED.into(),
            severity: Severity::Critical,
            debounced: false,
            template: format!(
                "{who} has not completed a write for {} s ({}), since {{at}}: the disk is failing or its link is hung. New studies are refused until it answers (a restart cannot help while the kernel waits on the disk); queries go on. Check the kernel log (dmesg) and SMART, then replace the disk.",
                w.waited.as_secs(),
                w.operation
            ),
        });
    }

    fn volume_conditions(&self, r: &Readings, out: &mut Vec<Candidate>) {
        let v = match &r.volume {
            None => return,
            Some(Err(e)) => return self.unreadable("volume", "The data volume", e, out),
            Some(Ok(v)) => v,
        };
        let path = v.path.display();
        if v.read_only {
            out.push(Candidate {
                key: "volume.read_only".into(),
                severity: Severity::Critical,
                debounced: false,
                template: format!(
                    "The data volume {path} is read-only since {{at}} (the kernel does this after disk errors). New studies are refused; check the disks and the kernel log, then remount or reboot."
                ),
            });
        }
        let floor = self.settings.min_free_bytes;
        if v.available_bytes < floor {
            out.push(Candidate {
                key: "volume.space".into(),
                severity: Severity::Critical,
                debounced: false,
                template: format!(
                    "The data volume {path} has only {} free since {{at}}, below the floor of {}: new studies are refused. Studies with a confirmed upstream copy are evicted automatically; otherwise check forwarding or add storage.",
                    megabytes(v.available_bytes),
                    megabytes(floor)
                ),
            });
        } else if v.available_bytes < floor.saturating_mul(2) {
            out.push(Candidate {
                key: "volume.space".into(),
                severity: Severity::Warning,
                debounced: false,
                template: format!(
                    "The data volume {path} has only {} free since {{at}}; new studies are refused below {}. Check that forwarding confirms studies so that they can be evicted.",
                    megabytes(v.available_bytes),
                    megabytes(floor)
                ),
            });
        }
        if let Some(free) = v.free_inode_percent()
            && free < self.settings.min_free_inodes_percent
        {
            out.push(Candidate {
                key: "volume.inodes".into(),
                severity: Severity::Warning,
                debounced: false,
                template: format!(
                    "The data volume {path} has only {free:.1} % of its inodes free since {{at}}: the file system runs out of file entries before it runs out of space."
                ),
            });
        }
    }

    fn smart_conditions(&self, r: &Readings, out: &mut Vec<Candidate>) {
        let devices = match &r.smart {
            None => return,
            Some(Err(e)) => return self.unreadable("smart", "SMART reports", e, out),
            Some(Ok(d)) => d,
        };
        for d in devices {
            let name = d.device.trim_start_matches("/dev/");
            let mut label = name.to_string();
            if let Some(bay) = self.bay(name) {
                label.push_str(&format!(" in {bay}"));
            }
            let identity = match (&d.model, &d.serial) {
                (Some(m), Some(s)) => format!(" ({m}, serial {s})"),
                (Some(m), None) => format!(" ({m})"),
                _ => String::new(),
            };
            let (severity, template) = match &d.verdict {
                Verdict::Ok => continue,
                Verdict::Warning { reasons } => (
                    Severity::Warning,
                    format!(
                        "Disk {label}{identity} shows wear since {{at}}: {}. Plan to replace it.",
                        reasons.join("; ")
                    ),
                ),
                Verdict::Failing { reasons } => (
                    Severity::Critical,
                    format!(
                        "Disk {label}{identity} predicts its own failure since {{at}}: {}. Replace it soon; the array keeps running meanwhile.",
                        reasons.join("; ")
                    ),
                ),
                // A disk that said it was wearing or failing and now says nothing (the probe
                // stopped, the report went stale) is not better: its alert stays as it was.
                Verdict::Unknown { .. }
                    if self
                        .active
                        .get(&format!("smart.{name}"))
                        .is_some_and(|a| a.severity > Severity::Info) =>
                {
                    out.push(keep(&self.active[&format!("smart.{name}")]));
                    continue;
                }
                Verdict::Unknown { reason } => (
                    Severity::Info,
                    format!(
                        "SMART state of disk {label}{identity} unknown since {{at}}: {reason}."
                    ),
                ),
            };
            out.push(Candidate {
                key: format!("smart.{name}"),
                severity,
                debounced: false,
                template,
            });
        }
    }
}

/// An active alert carried over unchanged: its source could not be read this time.
fn keep(a: &Alert) -> Candidate {
    Candidate {
        key: a.key.clone(),
        severity: a.severity,
        debounced: false,
        template: a.message.clone(),
    }
}

impl Policy {
    /// Whether the archive lives on array `md`.
    fn holds_archive(&self, md: &str) -> bool {
        self.settings
            .data_arrays
            .iter()
            .any(|d| d == md || d == "*")
    }

    /// A monitor could not read its source (`raid`, `volume`, `smart`): says so, and carries
    /// over that source's active alerts unchanged, since an unreadable array is no repaired
    /// array.
    fn unreadable(&self, source: &str, what: &str, error: &str, out: &mut Vec<Candidate>) {
        out.push(Candidate {
            key: format!("monitor.{source}"),
            severity: Severity::Warning,
            debounced: false,
            template: format!("{what} cannot be read since {{at}}: {error}"),
        });
        let prefix = format!("{source}.");
        out.extend(
            self.active
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, a)| keep(a)),
        );
    }
}

/// Why the appliance must power off now, if it must: on battery with the UPS signalling low
/// battery, or with less runtime left than the threshold.
fn power_off_reason(u: &Reading, threshold: Duration) -> Option<String> {
    let runtime = u.runtime_s.map(|s| Duration::from_secs(u64::from(s)));
    match u.state {
        UpsState::LowBattery => Some(format!(
            "the UPS signals low battery ({})",
            runtime
                .map(|d| format!("{} left", span(d)))
                .unwrap_or_else(|| "runtime unknown".into())
        )),
        UpsState::OnBattery => runtime.filter(|d| *d < threshold).map(|d| {
            format!(
                "the UPS has {} of runtime left, below the {} threshold",
                span(d),
                span(threshold)
            )
        }),
        UpsState::Online | UpsState::CommunicationLost => None,
    }
}

/// The disk a partition lives on: `sdb1` -> `sdb`, `nvme0n1p2` -> `nvme0n1`, `md0` stays.
fn disk_of(device: &str) -> &str {
    if device.starts_with("nvme") || device.starts_with("mmcblk") {
        match device.rfind('p') {
            Some(i)
                if i + 1 < device.len()
                    && device[i + 1..].bytes().all(|b| b.is_ascii_digit())
                    && device[..i].ends_with(|c: char| c.is_ascii_digit()) =>
            {
                &device[..i]
            }
            _ => device,
        }
    } else if device.starts_with("sd") || device.starts_with("vd") || device.starts_with("hd") {
        device.trim_end_matches(|c: char| c.is_ascii_digit())
    } else {
        device
    }
}

fn fill(template: &str, since: u64) -> String {
    template.replace("{at}", &local_time(since))
}

/// `HH:MM` in the appliance's local time, as a technician on site reads a clock.
fn local_time(unix: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(unix as i64, 0).single() {
        Some(t) => t.format("%H:%M").to_string(),
        None => format!("{unix}"),
    }
}

/// `4 min 10 s`, `2 h 5 min`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        if s.is_multiple_of(60) {
            format!("{} min", s / 60)
        } else {
            format!("{} min {} s", s / 60, s % 60)
        }
    } else {
        format!("{s} s")
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{} MB", bytes / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_map_to_their_disk() {
        assert_eq!(disk_of("sdb1"), "sdb");
        assert_eq!(disk_of("sdb"), "sdb");
        assert_eq!(disk_of("nvme0n1p2"), "nvme0n1");
        assert_eq!(disk_of("nvme0n1"), "nvme0n1");
        assert_eq!(disk_of("vdc"), "vdc");
        assert_eq!(disk_of("md0"), "md0");
    }

    #[test]
    fn spans_read_like_a_person_says_them() {
        assert_eq!(span(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(span(Duration::from_secs(300)), "5 min");
        assert_eq!(span(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(span(Duration::from_secs(42)), "42 s");
    }
}
