"""Hardware state for a test appliance, from the health crate's captured fixtures: a RAID
state (`/proc/mdstat`, sysfs, the root helper's mdadm output) and SMART reports, laid out as
the service reads them.

    <hw>/current/proc/mdstat
    <hw>/current/sys/block/mdN/md/...
    <hw>/current/helper/mdN.export, mdN.detail, smart-<disk>.json

`current` is a symbolic link, so `set_raid` swaps a whole state at once: the monitor never
reads half of one state and half of another, or none at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "appliance" / "health" / "tests" / "fixtures"


def set_raid(hw: Path, case: str) -> None:
    """Puts the captured RAID state `case` (and the SMART reports) in place under `hw`."""
    hw.mkdir(parents=True, exist_ok=True)
    src = FIXTURES / "raid" / case
    n = len(list(hw.glob("state-*")))
    state = hw / f"state-{n}"
    shutil.copytree(src / "proc", state / "proc")
    shutil.copytree(src / "sys", state / "sys")
    helper = state / "helper"
    shutil.copytree(src / "mdadm", helper)
    shutil.copy(FIXTURES / "smart" / "sata-qemu.json", helper / "smart-sda.json")
    shutil.copy(FIXTURES / "smart" / "nvme-qemu.json", helper / "smart-nvme0.json")
    link = hw / f".current-{n}"
    link.symlink_to(state.name)
    os.replace(link, hw / "current")


def health_keys(hw: Path) -> dict:
    """The [health] keys that point the service at `hw`."""
    return {"mdstat": hw / "current" / "proc" / "mdstat",
            "sysfs_block": hw / "current" / "sys" / "block",
            "helper_dir": hw / "current" / "helper"}
