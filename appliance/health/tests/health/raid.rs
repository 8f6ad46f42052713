//! md RAID: every fixture case gets the health its CASE.md expects, with and without sysfs, and
//! the mdstat reader copes with the kernel's formats.

use std::path::{Path, PathBuf};

use health::raid::{self, Array, MemberRole, RaidHealth, RaidSources};

/// One fixture directory and what its CASE.md expects.
struct Case {
    name: String,
    dir: PathBuf,
    /// `expected: <health>`: the worst array's health.
    worst: RaidHealth,
    /// `expected <mdN>: <health>` lines.
    per_array: Vec<(String, RaidHealth)>,
    /// `expected without sysfs: <health>`, where mdstat alone cannot tell what sysfs can.
    without_sysfs: Option<RaidHealth>,
}

fn health_word(word: &str, case: &Path) -> RaidHealth {
    match word.trim().trim_matches('`') {
        "ok" => RaidHealth::Ok,
        "rebuilding" => RaidHealth::Rebuilding,
        "degraded" => RaidHealth::Degraded,
        "failed" => RaidHealth::Failed,
        other => panic!("{}: unknown expected health {other:?}", case.display()),
    }
}

/// Every directory under `root` with a CASE.md, in name order.
fn cases(root: &Path) -> Vec<Case> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("CASE.md").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let case_md = dir.join("CASE.md");
            let text = std::fs::read_to_string(&case_md).unwrap();
            let mut worst = None;
            let mut per_array = Vec::new();
            let mut without_sysfs = None;
            for line in text.lines() {
                let Some(rest) = line.trim().strip_prefix("expected") else {
                    continue;
                };
                let Some((key, value)) = rest.split_once(':') else {
                    continue;
                };
                match key.trim() {
                    "" => worst = Some(health_word(value, &case_md)),
                    "without sysfs" => without_sysfs = Some(health_word(value, &case_md)),
                    array => per_array.push((array.to_string(), health_word(value, &case_md))),
                }
            }
            Case {
                name: dir.file_name().unwrap().to_string_lossy().into_owned(),
                worst: worst
                    .unwrap_or_else(|| panic!("{} has no `expected:` line", case_md.display())),
                per_array,
                without_sysfs,
                dir,
            }
        })
        .collect()
}

/// Sources pointed into a case directory; without sysfs, only its mdstat.
fn sources(dir: &Path, with_sysfs: bool) -> RaidSources {
    RaidSources {
        mdstat: dir.join("proc/mdstat"),
        sysfs_block: if with_sysfs {
            dir.join("sys/block")
        } else {
            dir.join("no-sysfs-here")
        },
        mdadm_dir: with_sysfs.then(|| dir.join("mdadm")),
    }
}

/// Samples every case and returns one line per disagreement with CASE.md.
fn mismatches(cases: &[Case], with_sysfs: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let arrays = raid::sample(&sources(&case.dir, with_sysfs))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let summary: Vec<String> = arrays
            .iter()
            .map(|a| format!("{} {:?} ({:?})", a.name, a.health, a.describe_problem()))
            .collect();
        let expected = if with_sysfs {
            case.worst
        } else {
            case.without_sysfs.unwrap_or(case.worst)
        };
        let worst = arrays.iter().map(|a| a.health).max();
        if worst != Some(expected) {
            wrong.push(format!(
                "{}: expected {expected:?}, got {summary:?}",
                case.name
            ));
        }
        if !with_sysfs && case.without_sysfs.is_some() {
            // Per-array expectations are stated for the full sources.
            continue;
        }
        for (name, health) in &case.per_array {
            match arrays.iter().find(|a| &a.name == name) {
                Some(a) if a.health == *health => {}
                _ => wrong.push(format!(
                    "{}: expected {name} {health:?}, got {summary:?}",
                    case.name
                )),
            }
        }
    }
    wrong
}

#[test]
fn captured_cases_match_their_expected_health() {
    let cases = cases(&crate::fixtures().join("raid"));
    assert!(
        cases.len() >= 10,
        "only {} captured cases under tests/fixtures/raid; run tests/fixtures/capture.sh",
        cases.len()
    );
    let wrong = mismatches(&cases, true);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn captured_cases_match_from_mdstat_alone() {
    let cases = cases(&crate::fixtures().join("raid"));
    assert!(cases.len() >= 10, "only {} captured cases", cases.len());
    let wrong = mismatches(&cases, false);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn handmade_cases_match_their_expected_health() {
    let cases = cases(&crate::fixtures().join("handmade/raid"));
    assert!(cases.len() >= 10, "only {} handmade cases", cases.len());
    let wrong = mismatches(&cases, true);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let wrong = mismatches(&cases, false);
    assert!(wrong.is_empty(), "without sysfs:\n{}", wrong.join("\n"));
}

/// Samples mdstat text alone, from a temporary directory.
fn from_mdstat(text: &str) -> Vec<Array> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("proc")).unwrap();
    std::fs::write(dir.path().join("proc/mdstat"), text).unwrap();
    raid::sample(&sources(dir.path(), false)).unwrap()
}

fn roles(array: &Array) -> Vec<(&str, MemberRole)> {
    array
        .members
        .iter()
        .map(|m| (m.device.as_str(), m.role))
        .collect()
}

#[test]
fn a_recovery_line_gives_progress_in_sectors() {
    let arrays = from_mdstat(
        "Personalities : [raid1] [raid6] [raid5] [raid4] \n\
         md1 : active raid5 sdd1[3] sdc1[1] sdb1[0]\n      \
         2093056 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/2] [UU_]\n      \
         [=>...................]  recovery =  8.5% (89600/1046528) finish=12.3min speed=22400K/sec\n\
         \n\
         unused devices: <none>\n",
    );
    let [md1] = arrays.as_slice() else {
        panic!("{arrays:?}")
    };
    assert_eq!(md1.level.as_deref(), Some("raid5"));
    assert_eq!(md1.raid_disks, Some(3));
    assert_eq!(md1.degraded, Some(1));
    assert_eq!(md1.sync_action.as_deref(), Some("recover"));
    assert_eq!(md1.mdstat_status.as_deref(), Some("[3/2] [UU_]"));
    assert_eq!(md1.sync_speed_kib_s, Some(22400));
    let progress = md1.sync_progress.as_ref().unwrap();
    assert_eq!((progress.done, progress.total), (179200, 2093056));
    assert_eq!(progress.percent, 8.5);
    assert_eq!(progress.finish_min, Some(12.3));
    // sdd1 was added after the array was built (descriptor 3 of a 3-disk array) and is the
    // one unmarked member more than the two `U`s.
    assert_eq!(
        roles(md1),
        [
            ("sdb1", MemberRole::Active),
            ("sdc1", MemberRole::Active),
            ("sdd1", MemberRole::Rebuilding)
        ]
    );
    assert_eq!(md1.health, RaidHealth::Rebuilding);
    assert_eq!(
        md1.describe_problem().as_deref(),
        Some("rebuilding onto sdd1, 8.5% done, about 12 min left")
    );
}

#[test]
fn other_progress_lines_are_read() {
    for (line, action, health) in [
        (
            "[====>................]  resync = 22.1% (231424/1046528) finish=0.6min speed=21038K/sec",
            "resync",
            RaidHealth::Rebuilding,
        ),
        (
            "[=>...................]  check =  7.7% (81408/1046528) finish=0.7min speed=20352K/sec",
            "check",
            RaidHealth::Ok,
        ),
        (
            "[>....................]  reshape =  0.4% (4608/1046528) finish=3.7min speed=4608K/sec",
            "reshape",
            RaidHealth::Rebuilding,
        ),
        // %3u.%u prints 100.0% with no space after `=`.
        (
            "[====================>]  check =100.0% (1046528/1046528) finish=0.0min speed=20000K/sec",
            "check",
            RaidHealth::Ok,
        ),
    ] {
        let arrays = from_mdstat(&format!(
            "Personalities : [raid1] \nmd0 : active raid1 sdb1[1] sda1[0]\n      \
             1046528 blocks super 1.2 [2/2] [UU]\n      {line}\n\nunused devices: <none>\n"
        ));
        let md0 = &arrays[0];
        assert_eq!(md0.sync_action.as_deref(), Some(action), "{line}");
        assert_eq!(md0.health, health, "{line}");
        assert!(md0.sync_progress.is_some(), "{line}");
        assert!(
            md0.members.iter().all(|m| m.role == MemberRole::Active),
            "{line}"
        );
    }
}

#[test]
fn faulty_and_spare_markers_give_roles() {
    let arrays = from_mdstat(
        "Personalities : [raid1] \n\
         md0 : active raid1 sdd1[3](S) sdc1[2](W) sdb1[1](F) sda1[0]\n      \
         1046528 blocks super 1.2 [3/2] [U_U]\n      \
         bitmap: 1/1 pages [4KB], 65536KB chunk\n\n\
         unused devices: <none>\n",
    );
    let md0 = &arrays[0];
    assert_eq!(
        roles(md0),
        [
            ("sda1", MemberRole::Active),
            ("sdb1", MemberRole::Faulty),
            ("sdc1", MemberRole::Active),
            ("sdd1", MemberRole::Spare)
        ]
    );
    assert_eq!(md0.members[1].state, ["faulty"]);
    assert_eq!(md0.members[2].state, ["write_mostly"]);
    assert_eq!(md0.failed_members()[0].device, "sdb1");
    // With the (S) spare idle, nothing rebuilds: the slot is simply missing.
    assert_eq!(md0.health, RaidHealth::Degraded);
    assert_eq!(
        md0.describe_problem().as_deref(),
        Some("degraded: 1 of 3 members missing; sdb1 failed")
    );
}

#[test]
fn an_inactive_array_is_failed_and_its_members_unknown() {
    let arrays = from_mdstat(
        "Personalities : [raid6] [raid5] [raid4] \n\
         md127 : inactive sdb1[1](S) sda1[0](S)\n      \
         2093056 blocks super 1.2\n       \n\
         unused devices: <none>\n",
    );
    let md127 = &arrays[0];
    assert_eq!(md127.array_state.as_deref(), Some("inactive"));
    assert_eq!(md127.level, None);
    assert_eq!(md127.health, RaidHealth::Failed);
    // The kernel lists every member of an array that is not running as (S); they are not
    // hot spares.
    assert!(md127.members.iter().all(|m| m.role == MemberRole::Unknown));
    assert_eq!(
        md127.describe_problem().as_deref(),
        Some("failed: the array is not running")
    );
}

#[test]
fn losing_more_than_the_level_survives_is_failed() {
    let arrays = from_mdstat(
        "Personalities : [raid6] [raid5] [raid4] \n\
         md0 : active raid5 sdc1[2](F) sdb1[1](F) sda1[0]\n      \
         2093056 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/1] [U__]\n\n\
         unused devices: <none>\n",
    );
    assert_eq!(arrays[0].health, RaidHealth::Failed);
    assert_eq!(
        arrays[0].describe_problem().as_deref(),
        Some("failed: 2 of 3 members missing, more than raid5 survives; sdb1 and sdc1 failed")
    );
}

#[test]
fn raid10_is_failed_only_when_loss_is_certain() {
    let raid10 = |working: u32, map: &str| {
        from_mdstat(&format!(
            "Personalities : [raid10] \nmd0 : active raid10 sdd1[3] sdc1[2] sdb1[1] sda1[0]\n      \
             2093056 blocks super 1.2 512K chunks 2 near-copies [4/{working}] [{map}]\n\n"
        ))[0]
            .health
    };
    assert_eq!(raid10(3, "UU_U"), RaidHealth::Degraded);
    assert_eq!(raid10(2, "U_U_"), RaidHealth::Degraded);
    assert_eq!(raid10(1, "U___"), RaidHealth::Failed);
}

#[test]
fn an_unplaceable_rebuild_target_is_unknown_not_guessed() {
    // sdb1 was re-added under its old descriptor number, so nothing marks which of the two
    // unmarked members is the one being rebuilt.
    let arrays = from_mdstat(
        "Personalities : [raid1] \n\
         md0 : active raid1 sdb1[1] sda1[0]\n      \
         1046528 blocks super 1.2 [2/1] [U_]\n      \
         [=>...................]  recovery =  9.9% (103616/1046528) finish=0.7min speed=20723K/sec\n\n",
    );
    let md0 = &arrays[0];
    assert!(md0.members.iter().all(|m| m.role == MemberRole::Unknown));
    assert_eq!(md0.health, RaidHealth::Rebuilding);
    assert_eq!(
        md0.describe_problem().as_deref(),
        Some("rebuilding, 9.9% done, about 1 min left")
    );
}

#[test]
fn no_mdstat_means_no_arrays() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(raid::sample(&sources(dir.path(), true)).unwrap(), []);
    // An empty list of arrays is also fine.
    assert_eq!(
        from_mdstat("Personalities : \nunused devices: <none>\n"),
        []
    );
}

#[test]
fn malformed_mdstat_is_an_error_naming_the_path() {
    for (text, line) in [
        ("", 1),
        ("Personalities : [raid1] \nmd0 : running raid1 sda1[0]\n", 2),
        ("Personalities : [raid1] \nmd0 : active raid1 sda1\n", 2),
        ("      indented text first\n", 1),
        ("this is not mdstat\n", 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mdstat");
        std::fs::write(&path, text).unwrap();
        let error = raid::sample(&RaidSources {
            mdstat: path.clone(),
            sysfs_block: dir.path().into(),
            mdadm_dir: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&format!("{} line {line} ", path.display())),
            "{text:?}: {error}"
        );
    }
}

#[test]
fn an_unreadable_mdstat_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be cannot be read as text.
    let error = raid::sample(&RaidSources {
        mdstat: dir.path().into(),
        sysfs_block: dir.path().into(),
        mdadm_dir: None,
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
}

#[test]
fn sysfs_roles_and_progress_win_over_mdstat() {
    let dir = crate::fixtures().join("handmade/raid/resync-delayed");
    let arrays = raid::sample(&sources(&dir, true)).unwrap();
    let md0 = arrays.iter().find(|a| a.name == "md0").unwrap();
    assert_eq!(md0.array_state.as_deref(), Some("clean"));
    assert_eq!(
        roles(md0),
        [
            ("sda1", MemberRole::Active),
            ("sdb1", MemberRole::Rebuilding)
        ]
    );
    assert_eq!(md0.members[1].slot, Some(1));
    assert_eq!(md0.members[0].errors, Some(0));
    let progress = md0.sync_progress.as_ref().unwrap();
    assert_eq!((progress.done, progress.total), (784896, 2093056));
    assert_eq!(progress.finish_min, Some(0.5));
    let md1 = arrays.iter().find(|a| a.name == "md1").unwrap();
    assert_eq!(md1.sync_progress, None);
    assert_eq!(
        md1.describe_problem().as_deref(),
        Some("rebuilding onto sdb2, waiting to start")
    );
}

#[test]
fn problems_that_do_not_change_the_verdict_are_still_described() {
    let spare = raid::sample(&sources(
        &crate::fixtures().join("handmade/raid/failed-spare"),
        true,
    ))
    .unwrap();
    assert_eq!(spare[0].health, RaidHealth::Ok);
    assert_eq!(
        spare[0].describe_problem().as_deref(),
        Some("spare sdc1 failed")
    );
    let replacement = raid::sample(&sources(
        &crate::fixtures().join("handmade/raid/raid5-replacement"),
        true,
    ))
    .unwrap();
    assert_eq!(
        replacement[0].describe_problem().as_deref(),
        Some("rebuilding onto sdd1, 12.0% done, about 1 min left; sdb1 is marked for replacement")
    );
}

#[test]
fn arrays_serialise_with_snake_case_words() {
    let arrays = from_mdstat(
        "Personalities : [raid1] \nmd0 : active raid1 sdb1[1](F) sda1[0]\n      \
         1046528 blocks super 1.2 [2/1] [U_]\n\n",
    );
    let json = serde_json::to_value(&arrays[0]).unwrap();
    assert_eq!(json["health"], "degraded");
    assert_eq!(json["members"][1]["role"], "faulty");
}

#[test]
fn two_arrays_each_get_their_own_health() {
    let dir = crate::fixtures().join("raid/two-arrays");
    for with_sysfs in [true, false] {
        let arrays = raid::sample(&sources(&dir, with_sysfs)).unwrap();
        let health: Vec<(&str, RaidHealth)> =
            arrays.iter().map(|a| (a.name.as_str(), a.health)).collect();
        // mdstat lists md1 first, and the order is kept.
        assert_eq!(
            health,
            [("md1", RaidHealth::Degraded), ("md0", RaidHealth::Ok)],
            "with sysfs: {with_sysfs}"
        );
    }
}

#[test]
fn an_inactive_array_does_not_borrow_mdadm_disk_count() {
    // The first version filled `raid_disks` from `mdadm --detail --export` whenever sysfs
    // and mdstat had none. In the captured `inactive` case, one member of a three-disk RAID5
    // was assembled by `mdadm --incremental`; sysfs `raid_disks` is empty and mdstat has no
    // `[n/m]`, but export says `MD_DEVICES=1`, so the status page showed a one-disk array.
    // mdadm's count is now used only for running arrays.
    let dir = crate::fixtures().join("raid/inactive");
    let arrays = raid::sample(&sources(&dir, true)).unwrap();
    assert_eq!(arrays[0].raid_disks, None);
    assert_eq!(arrays[0].level.as_deref(), Some("raid5"));
    assert_eq!(arrays[0].mdadm_state.as_deref(), Some("inactive"));
}

#[test]
fn a_recovery_wish_without_a_spare_is_not_described_as_running() {
    // With no spare, the kernel sets `sync_action` to `recover` for a moment and
    // `sync_completed` stays `none`. The health rules already ignored it, but
    // `describe_problem` appended "; recover running" to the degraded text whenever
    // `sync_action` was not idle, telling a technician a rebuild was under way when none was.
    let dir = crate::fixtures().join("handmade/raid/recover-without-spare");
    let arrays = raid::sample(&sources(&dir, true)).unwrap();
    assert_eq!(arrays[0].sync_action.as_deref(), Some("recover"));
    assert_eq!(
        arrays[0].describe_problem().as_deref(),
        Some("degraded: 1 of 2 members missing")
    );
}

#[test]
fn a_broken_raid5_is_described_by_its_missing_members() {
    // Linux sets `array_state` to `broken` for a raid5 that lost two members, as the captured
    // `raid5-failed` case shows; the first version assumed `broken` meant raid0 or linear and
    // said "the level has no redundancy", which is wrong for raid5.
    let dir = crate::fixtures().join("raid/raid5-failed");
    let arrays = raid::sample(&sources(&dir, true)).unwrap();
    assert_eq!(arrays[0].array_state.as_deref(), Some("broken"));
    let text = arrays[0].describe_problem().unwrap();
    assert!(
        text.starts_with("failed: 2 of 3 members missing, more than raid5 survives"),
        "{text}"
    );
}
