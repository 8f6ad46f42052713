"""Running the real `outpost` binary and DCMTK's tools, and comparing DICOM data sets.

Everything here talks to real processes over 127.0.0.1 only. The binary is found through
the environment variable OUTPOST_BIN (default: <repo>/target/release/outpost).

When the tests run as root (as CI does), every Outpost process runs the way its systemd
unit runs it: as the unit's user with the unit's capabilities (unit.py), in directories that
user owns, so that a permission the service lacks fails a test rather than a clinic.
OUTPOST_TEST_AS_ROOT=1 runs them as root instead.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[2]
OUTPOST_BIN = Path(os.environ.get("OUTPOST_BIN") or REPO / "target" / "release" / "outpost")
GEN_CORPUS = REPO / "tests" / "corpus" / "gen_corpus.py"
# DCMTK from Debian; pip's pynetdicom installs same-named shims earlier on PATH.
DCMTK_BIN = Path("/usr/bin")

ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Transfer syntaxes used in the corpus.
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
ALL_CORPUS_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE, RLE_LOSSLESS]
NATIVE_LE = {EXPLICIT_LE, IMPLICIT_LE}


# ---------------------------------------------------------------------------------------
# Ports and processes


_unit_user = None


def unit_user():
    """The unit's user (created when missing), or None when the service runs as the caller."""
    global _unit_user
    if os.geteuid() != 0 or os.environ.get("OUTPOST_TEST_AS_ROOT") == "1":
        return None
    if _unit_user is None:
        from unit import UnitUser
        _unit_user = UnitUser()
    return _unit_user


def reachable(path: Path) -> None:
    """Lets other users through every directory above `path` that is under /tmp (pytest
    makes its temporary directories private to their owner), and read `path` itself and
    what is below it. Symbolic links are left alone, and nothing outside /tmp is changed:
    a directory there the service's user cannot pass is reported instead."""
    path = Path(path).absolute()
    tmp = Path("/tmp")
    for d in reversed(path.parents):
        if d in (Path("/"), tmp) or d.is_symlink():
            continue
        mode = d.stat().st_mode
        if mode & 0o001:
            continue
        if not d.is_relative_to(tmp):
            raise PermissionError(
                f"{d} is closed to other users, so the service's user cannot reach {path}; "
                "run pytest with its temporary directories under /tmp (--basetemp)")
        d.chmod(mode | 0o001)
    items = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in items:
        if p.is_symlink() or not p.exists():
            continue
        mode = p.stat().st_mode
        p.chmod(mode | (0o005 if p.is_dir() else 0o004))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    # Without it DCMTK leaves Nagle on and every exchange stalls ~40 ms on delayed ACKs.
    env["TCP_NODELAY"] = "1"
    return env


def dcmtk(tool: str, *args: Any, cwd: Path | None = None, timeout: float = 60,
          check: bool = True) -> subprocess.CompletedProcess:
    """Runs a DCMTK tool by its full path; output is text (Latin-1 so no byte is lost)."""
    cmd = [str(DCMTK_BIN / tool), *map(str, args)]
    r = subprocess.run(cmd, cwd=cwd, env=dcmtk_env(), capture_output=True, timeout=timeout,
                       encoding="latin-1")
    if check and r.returncode != 0:
        raise AssertionError(
            f"{tool} exited {r.returncode}\ncommand: {' '.join(cmd)}\n"
            f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}")
    return r


class DcmtkServer:
    """A DCMTK SCP (storescp) running in the background."""

    def __init__(self, tool: str, args: list[Any], port: int, log: Path):
        self.port = port
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([str(DCMTK_BIN / tool), *map(str, args)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dcmtk_env())
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{tool} exited {self.proc.returncode}: "
                                     f"{log.read_text('latin-1')[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{tool} did not listen on {port} within 10 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------
# Outpost configuration and process


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def toml_text(dicom: dict, remotes: Iterable[dict], storage: dict, audit: dict | None = None,
              log: dict | None = None, destinations: Iterable[dict] = (),
              rules: Iterable[dict] = ()) -> str:
    """The configuration file; `destinations` and `rules` become [[forward.destination]]
    and [[forward.rule]] tables (nothing is written for them when both are empty)."""
    lines = ["[dicom]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in dicom.items()]
    for r in remotes:
        lines += ["", "[[dicom.remote]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in r.items()]
    lines += ["", "[storage]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in storage.items()]
    if audit:
        lines += ["", "[audit]"] + [f"{k} = {_toml_value(v)}" for k, v in audit.items()]
    if log:
        lines += ["", "[log]"] + [f"{k} = {_toml_value(v)}" for k, v in log.items()]
    for d in destinations:
        lines += ["", "[[forward.destination]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d.items()]
    for r in rules:
        lines += ["", "[[forward.rule]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in r.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Outpost:
    """One Outpost instance: its configuration, data directory and (when started) process.

    The same object can be started again after a stop or a kill, on the same data dir.
    """

    workdir: Path
    ae_title: str = "OUTPOST"
    port: int = 0
    # The admin panel's HTTPS port: each instance its own, as tests may run several.
    web_port: int = 0
    dicom: dict = field(default_factory=dict)
    remotes: list = field(default_factory=list)
    storage: dict = field(default_factory=dict)
    log_level: str = "info"
    # [[forward.destination]] and [[forward.rule]] tables, as dicts of keys.
    destinations: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    # Further sections ([health], [ups], [power], [alerts]) as TOML text.
    extra_toml: str = ""
    # Put before the binary, such as setpriv's arguments to run as the unit's user.
    launcher: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    starts: int = 0

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if not self.web_port:
            self.web_port = free_port()
        self.data_dir = self.workdir / "data"
        self.audit_path = self.workdir / "audit" / "audit.jsonl"
        self.config_path = self.workdir / "outpost.toml"
        self.log_path = self.workdir / "outpost.log"
        self.write_config()
        user = unit_user()
        if user is not None and not self.launcher:
            self.launcher = user.launcher()
            reachable(self.workdir)
            user.give(self.workdir)

    def write_config(self) -> None:
        dicom = {"ae_title": self.ae_title, "bind": "127.0.0.1", "port": self.port,
                 "accept_unknown_callers": "loopback"}
        dicom.update(self.dicom)
        storage = {"data_dir": self.data_dir, "durability": "full", "min_free_mb": 0}
        storage.update(self.storage)
        text = toml_text(dicom, self.remotes, storage, {"path": self.audit_path},
                         {"level": self.log_level}, self.destinations, self.rules)
        text += f'\n[web]\nlisten = "127.0.0.1:{self.web_port}"\n'
        self.config_path.write_text(text + self.extra_toml)

    # -- process ------------------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None, wait: bool = True,
              timeout: float = 20) -> "Outpost":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not OUTPOST_BIN.is_file():
            raise AssertionError(
                f"outpost binary not found at {OUTPOST_BIN}: build it with "
                "`cargo build --release -p outpost --features systemd` or set OUTPOST_BIN")
        self.write_config()
        full_env = dict(os.environ)
        full_env.pop("RUST_LOG", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("WATCHDOG_USEC", None)
        full_env.pop("WATCHDOG_PID", None)
        full_env["NO_COLOR"] = "1"
        full_env.update(env or {})
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*map(str, self.launcher), str(OUTPOST_BIN), "serve", "--config",
                 str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=full_env)
        if wait:
            self.wait_ready(timeout)
        return self

    def control_answers(self) -> bool:
        """Whether a service listens on this instance's control socket (a file a killed run
        left behind refuses the connection)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.data_dir / "control.sock"))
                return True
            except OSError:
                return False

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"outpost exited with {self.proc.returncode} before listening:\n"
                    f"{self.log_tail()}")
            # The DICOM port is bound before the service starts (so it accepts into its
            # backlog early); the control socket answers only once start-up is done, and a
            # test's first `outpost status` must not race it.
            if port_accepts(self.port) and self.control_answers():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"outpost did not listen on {self.port} within "
                                     f"{timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        if not self.alive():
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"outpost did not exit within {timeout} s of SIGTERM:\n"
                                 f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def log_text(self) -> str:
        try:
            return ANSI.sub("", self.log_path.read_text("utf-8", errors="replace"))
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_mark(self) -> int:
        """A position in the log; `log_since(mark)` is what was logged after it."""
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        """Waits until a line of the log matches the regular expression; returns it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)

    # -- the command line ---------------------------------------------------------------

    def cli(self, *args: Any, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs `outpost ARGS --config <this config>` as the service's user, as a technician
        on the appliance does (`sudo -u outpost outpost import ...`), so what it writes into
        the archive stays the service's."""
        self.write_config()
        for a in args:
            if isinstance(a, Path) and a.exists():
                reachable(a)
        return run_outpost(*args, "--config", self.config_path, timeout=timeout,
                           launcher=self.launcher)

    def object_files(self) -> list[Path]:
        return sorted((self.data_dir / "objects").rglob("*.dcm"))


def run_outpost(*args: Any, timeout: float = 120, cwd: Path | None = None,
                launcher: list | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.pop("RUST_LOG", None)
    return subprocess.run([*map(str, launcher or []), str(OUTPOST_BIN), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


# ---------------------------------------------------------------------------------------
# Part 10 files and data set bytes


def split_part10(data: bytes) -> tuple[dict[int, bytes], bytes]:
    """(file meta elements by tag, data set bytes) of a Part 10 file.

    The file meta group is always Explicit VR Little Endian; everything after it is the
    data set, compared byte for byte by the tests.
    """
    if data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file (no DICM after the preamble)")
    off = 132
    meta: dict[int, bytes] = {}
    while off + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, off)
        if group != 0x0002:
            break
        vr = data[off + 4:off + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", data, off + 8)
            value_at = off + 12
        else:
            (length,) = struct.unpack_from("<H", data, off + 6)
            value_at = off + 8
        meta[(group << 16) | elem] = data[value_at:value_at + length]
        off = value_at + length
    return meta, data[off:]


def dataset_bytes(source: bytes | Path | str) -> bytes:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return split_part10(data)[1]


def transfer_syntax_of(source: bytes | Path | str) -> str:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return split_part10(data)[0][0x00020010].rstrip(b"\0 ").decode()


def first_difference(a: bytes, b: bytes) -> str:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return (f"first difference at byte {i} of the data set "
                    f"(lengths {len(a)} and {len(b)}): "
                    f"{a[max(0, i - 8):i + 8].hex()} vs {b[max(0, i - 8):i + 8].hex()}")
    return f"one is a prefix of the other (lengths {len(a)} and {len(b)})"


def assert_same_dataset(got: bytes, want: bytes, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: data set differs; {first_difference(got, want)}")


# ---------------------------------------------------------------------------------------
# Decoded comparison (only where Outpost had to convert)


def pixel_bytes(ds) -> bytes:
    """Pixel Data as little-endian native sample bytes, whatever the transfer syntax."""
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        buf, _ = get_decoder(ts).as_buffer(ds)
        return bytes(buf)
    raw = bytes(ds.PixelData)
    if not ts.is_little_endian and int(ds.BitsAllocated) == 16:
        swapped = bytearray(len(raw))
        swapped[0::2] = raw[1::2]
        swapped[1::2] = raw[0::2]
        return bytes(swapped)
    if not ts.is_little_endian and int(ds.BitsAllocated) == 32:
        return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return raw


def _normal(elem) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    v = elem.value
    if isinstance(v, MultiValue):
        return [str(x) if isinstance(x, PersonName) else x for x in v]
    if isinstance(v, PersonName):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    return v


ITEM_TAG = b"\xfe\xff\x00\xe0"


def flatten(ds, top: bool = True) -> dict:
    """Tag -> decoded value (sequences as lists of dicts; Pixel Data as native samples).

    Private elements other than sequences compare by their value bytes: a reader without
    the private dictionary sees them as UN after a conversion from Implicit VR."""
    from pydicom.dataelem import RawDataElement

    out = {}
    for tag in list(ds.keys()):
        if tag.group == 0x0002:
            continue
        raw = ds.get_item(tag)
        elem = ds[tag]
        key = int(tag)
        if tag == 0x7FE00010 and top:
            out[key] = pixel_bytes(ds)
        elif elem.VR == "SQ":
            out[key] = [flatten(item, top=False) for item in elem.value]
        elif elem.VR == "UN" and isinstance(elem.value, bytes) and elem.value[:4] == ITEM_TAG:
            # A sequence whose VR the writer did not know (a private SQ converted from
            # Implicit VR) is UN holding the items in Implicit VR Little Endian (PS3.5 6.2.2).
            from pydicom.filereader import read_sequence
            seq = read_sequence(io.BytesIO(elem.value), True, True, len(elem.value),
                                ds._character_set)
            out[key] = [flatten(item, top=False) for item in seq]
        elif tag.is_private and not tag.is_private_creator and isinstance(raw, RawDataElement):
            out[key] = bytes(raw.value or b"")
        else:
            out[key] = _normal(elem)
    return out


def decoded_differences(got: bytes, want: bytes) -> list[str]:
    """The attributes that differ once both Part 10 files are decoded with pydicom."""
    import pydicom

    a = flatten(pydicom.dcmread(io.BytesIO(got)))
    b = flatten(pydicom.dcmread(io.BytesIO(want)))
    diffs = []
    for tag in sorted(set(a) | set(b)):
        if a.get(tag) != b.get(tag):
            ga, gb = repr(a.get(tag))[:120], repr(b.get(tag))[:120]
            diffs.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): got {ga}, sent {gb}")
    return diffs


def elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.2f} s"
