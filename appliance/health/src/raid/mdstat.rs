//! The `/proc/mdstat` parser: one record per array, exactly as the kernel printed it.
//!
//! The kernel writes (see `md_seq_show` and `status_resync` in `drivers/md/md.c`):
//!
//! ```text
//! Personalities : [raid1] [raid6] [raid5] [raid4]
//! md1 : active raid5 sdd1[3] sdc1[1] sdb1[0]
//!       2093056 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/2] [UU_]
//!       [=>...................]  recovery =  8.5% (89600/1046528) finish=0.7min speed=22400K/sec
//!
//! md0 : active raid1 sdb1[1](F) sda1[0]
//!       1046528 blocks super 1.2 [2/1] [U_]
//!
//! md127 : inactive sde1[1](S)
//!       1046528 blocks super 1.2
//!
//! unused devices: <none>
//! ```
//!
//! The number in `sdb1[1]` is the kernel's descriptor number, not the slot in the array, so
//! this module never presents it as a slot. Member markers are `(W)` write-mostly, `(F)`
//! faulty, `(S)` not placed in a slot (a hot spare, or any member of an array that is not
//! running), `(R)` replacement and `(J)` journal. A member being rebuilt has no marker at all:
//! it shows only as an `_` in the `[UU_]` map, which is why `Array` prefers sysfs for roles.
//!
//! The progress line says `recovery`, `resync`, `check` or `reshape`; a requested `repair`
//! prints as `resync` here, which only sysfs's `sync_action` tells apart. Instead of a
//! progress bar the line can be `resync=DELAYED` (waiting for another array sharing a disk)
//! or `resync=PENDING` (an auto-read-only array that will resync on its first write).

use std::path::Path;

use crate::HealthError;

/// One array's stanza in `/proc/mdstat`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MdstatArray {
    pub name: String,
    /// `active` rather than `inactive`.
    pub active: bool,
    /// `(read-only)` or `(auto-read-only)` after `active`, without the parentheses.
    pub read_only: Option<String>,
    /// The personality, e.g. `raid1`; absent for inactive arrays.
    pub level: Option<String>,
    pub members: Vec<MdstatMember>,
    /// From `[3/2]`: the slots the array has.
    pub raid_disks: Option<u32>,
    /// From `[3/2]`: the slots holding an in-sync member.
    pub working: Option<u32>,
    /// The `UU_` map without brackets.
    pub slot_map: Option<String>,
    /// RAID10 copies of each block (near copies times far or offset copies).
    pub copies: Option<u32>,
    /// `super external:imsm` and the like: a container that only holds metadata for the
    /// arrays inside it, and is inactive by design.
    pub container: bool,
    pub sync: Option<MdstatSync>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MdstatMember {
    pub device: String,
    /// The kernel's descriptor number from `sdb1[1]`; not the slot.
    pub number: u32,
    pub faulty: bool,
    pub spare: bool,
    pub write_mostly: bool,
    pub replacement: bool,
    pub journal: bool,
}

/// What the line under the status line says about a running sync.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MdstatSync {
    Running {
        /// `recovery`, `resync`, `check` or `reshape`, as printed.
        kind: String,
        percent: f32,
        /// Both in 1 KiB blocks, as printed.
        done_kib: u64,
        total_kib: u64,
        finish_min: Option<f32>,
        speed_kib_s: Option<u64>,
    },
    /// `resync=DELAYED`: a sync is queued behind another array's sync on the same disks.
    Delayed,
    /// `resync=PENDING`: the array needs a resync that starts on its first write.
    Pending,
}

/// Parses the whole file. `path` only names the input in errors.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Vec<MdstatArray>, HealthError> {
    let malformed = |line: usize, reason: String| HealthError::Mdstat {
        path: path.to_path_buf(),
        line,
        reason,
    };
    if text.trim().is_empty() {
        return Err(malformed(
            1,
            "the file is empty, but the kernel always writes a Personalities line".into(),
        ));
    }
    let mut arrays: Vec<MdstatArray> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            // Body lines belong to the stanza above them. One before any stanza means the
            // text is not mdstat at all.
            let Some(array) = arrays.last_mut() else {
                return Err(malformed(
                    number,
                    "an indented line comes before any array".into(),
                ));
            };
            body_line(array, line.trim());
            continue;
        }
        let head = line.split_whitespace().next().unwrap_or_default();
        // `read_ahead` is printed by 2.4 kernels; `Event:` by some vendor kernels.
        if matches!(head, "Personalities" | "unused" | "read_ahead" | "Event:") {
            continue;
        }
        arrays.push(header_line(line).map_err(|reason| malformed(number, reason))?);
    }
    Ok(arrays)
}

/// Parses `md0 : active (auto-read-only) raid1 sdb1[1](F) sda1[0]`.
fn header_line(line: &str) -> Result<MdstatArray, String> {
    let Some((name, rest)) = line.split_once(" : ") else {
        return Err(format!(
            "expected `mdN : active|inactive ...`, found {line:?}"
        ));
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("{name:?} is not an md device name"));
    }
    let mut words = rest.split_whitespace();
    let active = match words.next() {
        Some("active") => true,
        Some("inactive") => false,
        other => {
            return Err(format!(
                "the state of {name} is {:?}, expected `active` or `inactive`",
                other.unwrap_or("")
            ));
        }
    };
    let mut array = MdstatArray {
        name: name.to_string(),
        active,
        read_only: None,
        level: None,
        members: Vec::new(),
        raid_disks: None,
        working: None,
        slot_map: None,
        copies: None,
        container: false,
        sync: None,
    };
    for word in words {
        if let Some(inner) = word.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
            array.read_only = Some(inner.to_string());
        } else if word.contains('[') {
            array.members.push(member(word).ok_or_else(|| {
                format!("{word:?} in {name} is not a member like `sdb1[1]` or `sdb1[1](F)`")
            })?);
        } else if array.level.is_none() && array.members.is_empty() {
            array.level = Some(word.to_string());
        } else {
            return Err(format!("unexpected {word:?} among the members of {name}"));
        }
    }
    Ok(array)
}

/// Parses `sdb1[1]`, `sdb1[1](F)` or `sdb1[1](W)(S)`.
fn member(word: &str) -> Option<MdstatMember> {
    let open = word.find('[')?;
    let close = open + word[open..].find(']')?;
    let device = &word[..open];
    let number = word[open + 1..close].parse().ok()?;
    let mut member = MdstatMember {
        device: device.to_string(),
        number,
        faulty: false,
        spare: false,
        write_mostly: false,
        replacement: false,
        journal: false,
    };
    let mut markers = &word[close + 1..];
    while !markers.is_empty() {
        let marker = markers.strip_prefix('(')?;
        let end = marker.find(')')?;
        match &marker[..end] {
            "F" => member.faulty = true,
            "S" => member.spare = true,
            "W" => member.write_mostly = true,
            "R" => member.replacement = true,
            "J" => member.journal = true,
            // Kernels may add markers; an unknown one does not change the member's role.
            _ => {}
        }
        markers = &marker[end + 1..];
    }
    (!device.is_empty()).then_some(member)
}

/// Reads what matters from an indented line: the status, the RAID10 copies, the container
/// marker and the sync progress. Lines this module does not understand (such as `bitmap:`)
/// are skipped, because newer kernels add lines and that must not make mdstat unreadable.
fn body_line(array: &mut MdstatArray, line: &str) {
    if line.starts_with("bitmap:") {
        return;
    }
    if let Some(sync) = sync_line(line) {
        array.sync = Some(sync);
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        if let Some(counts) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            if let Some((disks, working)) = counts.split_once('/')
                && let (Ok(disks), Ok(working)) = (disks.parse(), working.parse())
            {
                array.raid_disks = Some(disks);
                array.working = Some(working);
            } else if !counts.is_empty() && counts.chars().all(|c| c == 'U' || c == '_') {
                array.slot_map = Some(counts.to_string());
            }
        }
        if let Some(kind) = word.strip_suffix("-copies")
            && matches!(kind, "near" | "far" | "offset")
            && let Some(n) = i.checked_sub(1).and_then(|p| words[p].parse::<u32>().ok())
        {
            array.copies = Some(array.copies.unwrap_or(1) * n);
        }
        if *word == "super"
            && let Some(metadata) = words.get(i + 1)
            && let Some(format) = metadata.strip_prefix("external:")
        {
            // `external:imsm` is a container; `external:/md127/0` is an array inside one.
            array.container = !format.starts_with('/') && !format.starts_with('-');
        }
    }
}

/// Parses `[=>....]  recovery =  8.5% (89600/1046528) finish=0.7min speed=22400K/sec`,
/// `resync=DELAYED` and `resync=PENDING`.
fn sync_line(line: &str) -> Option<MdstatSync> {
    if line.ends_with("=DELAYED") {
        return Some(MdstatSync::Delayed);
    }
    if line.ends_with("=PENDING") {
        return Some(MdstatSync::Pending);
    }
    // Drop the progress bar, which contains no `=` followed by a space-separated word.
    let text = match line.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1,
        None => line,
    };
    let (kind, rest) = text.split_once('=')?;
    let kind = kind.trim();
    if !matches!(kind, "recovery" | "resync" | "check" | "reshape" | "repair") {
        return None;
    }
    let (percent, rest) = rest.trim_start().split_once('%')?;
    let percent: f32 = percent.trim().parse().ok()?;
    let mut done_kib = 0;
    let mut total_kib = 0;
    let mut finish_min = None;
    let mut speed_kib_s = None;
    for word in rest.split_whitespace() {
        if let Some(pair) = word.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
            if let Some((done, total)) = pair.split_once('/') {
                done_kib = done.parse().ok()?;
                total_kib = total.parse().ok()?;
            }
        } else if let Some(minutes) = word
            .strip_prefix("finish=")
            .and_then(|w| w.strip_suffix("min"))
        {
            finish_min = minutes.parse().ok();
        } else if let Some(speed) = word
            .strip_prefix("speed=")
            .and_then(|w| w.strip_suffix("K/sec"))
        {
            speed_kib_s = speed.parse().ok();
        }
    }
    Some(MdstatSync::Running {
        kind: kind.to_string(),
        percent,
        done_kib,
        total_kib,
        finish_min,
        speed_kib_s,
    })
}
