"""Running Outpost the way its systemd unit does: as the unit's user, with only the unit's
capabilities and no way to gain more, so a permission the service lacks fails here rather
than in a clinic.

The unit file (configs/systemd/outpost.service) is read, not copied: User=, Group=,
SupplementaryGroups= (and no other group), AmbientCapabilities= and CapabilityBoundingSet=
become setpriv arguments, and NoNewPrivileges=yes becomes --no-new-privs. The user is created from
configs/systemd/outpost.sysusers when it does not exist yet (tests/run runs as root in CI).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import REPO

UNIT = REPO / "configs" / "systemd" / "outpost.service"
SYSUSERS = REPO / "configs" / "systemd" / "outpost.sysusers"


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """The [Service] section's keys, each with every value it was given, in order."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _caps(values: list[str]) -> list[str]:
    caps: list[str] = []
    for v in values:
        caps += [c.lower().removeprefix("cap_") for c in v.split()]
    return caps


class UnitUser:
    """The unit's user and how to start a process as it."""

    def __init__(self):
        s = unit_settings()
        self.user = s["User"][-1]
        self.group = s.get("Group", [self.user])[-1]
        self.groups = " ".join(s.get("SupplementaryGroups", [])).split()
        self.ambient = _caps(s.get("AmbientCapabilities", []))
        self.bounding = _caps(s.get("CapabilityBoundingSet", []))
        self.no_new_privs = s.get("NoNewPrivileges", ["no"])[-1] in ("yes", "true", "1")
        if os.geteuid() != 0:
            raise PermissionError("running as the unit's user needs root to switch users")
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True,
                           capture_output=True, timeout=60)
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.gid = grp.getgrnam(self.group).gr_gid

    def launcher(self, ambient: list[str] | None = None) -> list[str]:
        """setpriv arguments that put a command into the unit's user and capabilities."""
        ambient = self.ambient if ambient is None else ambient
        inh = ",".join(["-all"] + [f"+{c}" for c in ambient])
        bounding = ",".join(["-all"] + [f"+{c}" for c in self.bounding])
        # The unit's SupplementaryGroups=, not the user's groups in /etc/group: the unit is
        # what gives the service the dialout group on the appliance.
        groups = (["--groups=" + ",".join(str(grp.getgrnam(g).gr_gid) for g in self.groups)]
                  if self.groups else ["--clear-groups"])
        args = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", *groups,
                f"--inh-caps={inh}", f"--ambient-caps={inh}", f"--bounding-set={bounding}"]
        if self.no_new_privs:
            args.append("--no-new-privs")
        return args + ["--"]

    def workdir(self) -> Path:
        """A directory the user owns, in a place it can reach (pytest's own temporary
        directories are private to root)."""
        d = Path(tempfile.mkdtemp(prefix="outpost-unit-", dir="/tmp"))
        d.chmod(0o755)
        os.chown(d, self.uid, self.gid)
        return d

    def give(self, path: Path) -> None:
        """Hands a tree to the user (its files stay readable by the tests, which run as root)."""
        for p in [path, *path.rglob("*")]:
            os.chown(p, self.uid, self.gid, follow_symlinks=False)

    @staticmethod
    def remove(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
