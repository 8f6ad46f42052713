"""Hardware health against real peers, with the service running as its systemd unit's user:
a UPS simulated with pymodbus (a Modbus implementation other than ours) walked from mains to
battery to low runtime, RAID state from arrays captured in a VM, SMART reports, the alert
webhook, and `outpost status --json` from the running service."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

import dicomnet as net
import synth
from harness import (EXPLICIT_LE, OUTPOST_BIN, REPO, Outpost, dataset_bytes, dcmtk,
                     port_accepts)
from hwstate import FIXTURES, health_keys, set_raid
from unit import UnitUser
from upssim import UpsSimulator


@pytest.fixture(scope="module")
def unit_user() -> UnitUser:
    try:
        return UnitUser()
    except PermissionError as e:
        pytest.skip(str(e))


@pytest.fixture
def unit_outposts(request, unit_user):
    """Outposts running as the unit's user in a directory that user owns."""
    base = unit_user.workdir()
    made: list[Outpost] = []

    def make(name: str, extra_toml: str = "", start: bool = True, **kw) -> Outpost:
        o = Outpost(base / name, extra_toml=extra_toml, launcher=unit_user.launcher(), **kw)
        unit_user.give(o.workdir)
        made.append(o)
        if start:
            o.start()
        return o

    yield make
    failed = getattr(getattr(request.node, "rep_call", None), "failed", False)
    for o in made:
        if o.alive():
            o.kill()
        if failed:
            print(f"\n----- log of {o.workdir.name} -----\n{o.log_tail(80)}")
    UnitUser.remove(base)


@pytest.fixture
def ups():
    sim = UpsSimulator()
    sim.start()
    sim.online(runtime_s=3600, charge_pct=100.0, load_pct=20.0)
    yield sim
    sim.stop()


def hardware_dir(o: Outpost, user: UnitUser, raid_case: str = "raid1-clean") -> Path:
    """A captured RAID state and SMART reports for the appliance (hwstate.py)."""
    hw = o.workdir / "hw"
    set_raid(hw, raid_case)
    user.give(hw)
    return hw


def health_toml(hw: Path, **overrides) -> str:
    # The captured arrays are md0 (and md1); the test machine's own volume is on no array.
    keys = {**health_keys(hw), "raid_interval_s": 1, "volume_interval_s": 1,
            "smart_interval_s": 10, "bays": {"sda": "bay 1", "sdb": "bay 2"},
            "data_arrays": ["md0"]}
    keys.update(overrides)
    return "\n[health]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items())


def ups_toml(sim: UpsSimulator, **overrides) -> str:
    keys = {"transport": "tcp", "address": f"127.0.0.1:{sim.port}", "unit_id": 1,
            "profile": "apc-smt", "poll_interval_s": 1, "timeout_ms": 500,
            "shutdown_when_runtime_below_s": 300, "debounce_s": 2, "outlet_off_delay_s": 90}
    keys.update(overrides)
    return "\n[ups]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items())


def toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    return json.dumps(str(v))


def status(o: Outpost, user: UnitUser) -> dict:
    """`outpost status --json`, asked as the unit's user, of the running service."""
    r = subprocess.run([*user.launcher(), str(OUTPOST_BIN), "status", "--json", "--config",
                        str(o.config_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(what: str, check, timeout: float = 15, every: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def wait_status(o: Outpost, user: UnitUser, what: str, predicate, timeout: float = 15,
                every: float = 0.2) -> dict:
    """Asks for the status until `predicate(status)` holds; returns that status."""
    return wait_for(what, lambda: (lambda st: st if predicate(st) else None)(status(o, user)),
                    timeout, every)


def ups_state(s: dict) -> str | None:
    return (s["hardware"]["ups"]["reading"] or {}).get("state")


def alert(s: dict, prefix: str) -> dict | None:
    return next((a for a in s["hardware"]["alerts"] if a["key"].startswith(prefix)), None)


def alert_keys(s: dict) -> set[str]:
    return {a["key"] for a in s["hardware"]["alerts"]}


def study(tmp: Path, n: int, count: int = 2) -> tuple[list[Path], list[bytes]]:
    paths, datas = [], []
    for i in range(count):
        data = synth.ct_instance(patient_id=f"HW{n}", study_uid=synth.uid(80, n),
                                 series_uid=synth.uid(81, n), sop_uid=synth.uid(82, n, i),
                                 rows=64, cols=64)
        paths.append(synth.write(tmp / f"hw-{n}-{i}.dcm", data))
        datas.append(data)
    return paths, datas


# -- a C-STORE held in flight ---------------------------------------------------------


def store_rq_command(message_id: int, sop_class: str, sop_uid: str) -> bytes:
    el = net._el
    rest = (el(0, 0x0002, net._uid(sop_class)) + el(0, 0x0100, struct.pack("<H", 0x0001))
            + el(0, 0x0110, struct.pack("<H", message_id))
            + el(0, 0x0700, struct.pack("<H", 0))
            + el(0, 0x0800, struct.pack("<H", 0x0000))
            + el(0, 0x1000, net._uid(sop_uid)))
    return el(0, 0x0000, struct.pack("<I", len(rest))) + rest


def response_status(sock: socket.socket, timeout: float = 30) -> int:
    pdu = net.read_pdu(sock, timeout)
    assert pdu is not None and pdu[0] == 0x04, f"expected P-DATA-TF, got {pdu!r}"
    fields = net._command_fields(pdu[1][6:])
    return struct.unpack("<H", fields[0x0900][:2])[0]


# -- the tests --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_ups_power_off_sequence(unit_outposts, unit_user, ups, tmp_path):
    """Mains -> battery -> runtime low: the service keeps storing on battery, then stops
    accepting, lets the C-STORE in flight finish, closes the archive, leaves the
    clean-shutdown marker, sends the APC delayed outlet-off command and runs the
    power-off command; after a restart the studies acknowledged before are intact."""
    o = unit_outposts("power", start=False, dicom={"shutdown_grace_s": 10})
    hw = hardware_dir(o, unit_user)
    called = o.workdir / "poweroff-called"
    script = o.workdir / "poweroff.sh"
    script.write_text(f"#!/bin/sh\necho \"$(id -un) $*\" > {called}\n")
    script.chmod(0o755)
    o.extra_toml = (health_toml(hw) + ups_toml(ups)
                    + f"\n[power]\nshutdown_command = [{json.dumps(str(script))}, \"now\"]\n")
    unit_user.give(o.workdir)
    o.start()

    s = wait_status(o, unit_user, "the UPS read as online", lambda st: ups_state(st) == "online")
    assert s["hardware"]["ups"]["reading"]["runtime_s"] == 3600

    before, before_data = study(tmp_path, 1)
    dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *before)

    # Mains lost: an alert, a checkpoint, and studies still accepted.
    ups.on_battery(runtime_s=1800, charge_pct=80.0)
    s = wait_status(o, unit_user, "the on-battery alert", lambda st: alert(st, "ups.on_battery"))
    message = alert(s, "ups.on_battery")["message"]
    assert "Mains power lost" in message and "30 min left" in message, message
    o.wait_log("on battery: everything acknowledged is checkpointed")
    during, during_data = study(tmp_path, 2)
    dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *during)

    # A C-STORE in flight: the command and the first half of the data set are sent.
    in_flight = synth.ct_instance(patient_id="HW3", study_uid=synth.uid(80, 3),
                                  series_uid=synth.uid(81, 3), sop_uid=synth.uid(82, 3, 0),
                                  rows=128, cols=128)
    ds = dataset_bytes(in_flight)
    sock, _ = net.raw_associate(o.port, calling="INFLIGHT", abstract=synth.CT_IMAGE,
                                syntaxes=(EXPLICIT_LE,))
    sock.sendall(net.p_data(1, store_rq_command(1, synth.CT_IMAGE, synth.uid(82, 3, 0)),
                            command=True))
    half = len(ds) // 2
    sock.sendall(net.p_data(1, ds[:half], command=False, last=False))

    # Runtime below the threshold, and the UPS says so for longer than the debounce.
    mark = o.log_mark()
    ups.on_battery(runtime_s=200, charge_pct=20.0)
    t0 = time.monotonic()
    o.wait_log("powering off because the UPS has 3 min 20 s of runtime left", timeout=15)
    took = time.monotonic() - t0
    assert took >= 1.5, f"powered off {took:.1f} s after the reading, inside the debounce"
    time.sleep(0.5)
    # No new associations...
    assert not port_accepts(o.port), "still accepting associations while powering off"
    # ...but the one in flight finishes and is acknowledged.
    sock.sendall(net.p_data(1, ds[half:], command=False, last=True))
    assert response_status(sock) == 0x0000
    sock.sendall(net.RELEASE_RQ)
    net.read_pdu(sock, 5)
    sock.close()

    assert o.proc.wait(40) == 0, o.log_tail()
    log = o.log_since(mark)
    order = ["powering off because the UPS has",
             "index writer stopped; everything acknowledged is checkpointed",
             "the UPS will switch its outlets off after the delay",
             "running the power-off command",
             "the power-off command succeeded"]
    positions = [log.find(x) for x in order]
    assert all(p >= 0 for p in positions), (positions, log[-3000:])
    assert positions == sorted(positions), (positions, log[-3000:])
    # The power-off command ran as the unit's user.
    assert called.read_text().split() == [unit_user.user, "now"]
    # The APC outlet command: the main outlet group's turn-off countdown, then "shutdown"
    # (off after the delay, on again when mains returns).
    assert ups.outlet_off_requested(), ups.writes
    assert ups.turn_off_countdown() == 90, ups.writes
    marker = json.loads((o.data_dir / "clean-shutdown.json").read_text())
    assert marker["reason"] == "the UPS is running out"
    audit = o.audit_path.read_text()
    assert '"event":"power-off"' in audit and '"event":"alert-raised"' in audit

    # Mains back: the appliance starts, says the last stop was clean, and every study it
    # acknowledged is there, byte for byte.
    ups.online(runtime_s=3600, charge_pct=60.0)
    mark = o.log_mark()
    o.start()
    assert "the previous run stopped cleanly" in o.log_since(mark)
    assert not (o.data_dir / "clean-shutdown.json").exists()
    for n, datas in ((1, before_data), (2, during_data), (3, [in_flight])):
        result, rec = net.get(o.port, "S", net.query("STUDY", StudyInstanceUID=synth.uid(80, n)),
                              [(synth.CT_IMAGE, [EXPLICIT_LE])])
        assert (result.status, result.completed) == (net.SUCCESS, len(datas)), n
        got = sorted(r.dataset for r in rec.received)
        assert got == sorted(dataset_bytes(d) for d in datas), n
    assert o.terminate() == 0


@pytest.mark.timeout(120)
def test_ups_communication_lost_and_back(unit_outposts, unit_user, ups):
    """A UPS card that stops answering is "communication lost" within the timeout, raises an
    alert after the debounce, and is read again once it answers."""
    o = unit_outposts("commlost", start=False)
    hw = hardware_dir(o, unit_user)
    o.extra_toml = health_toml(hw) + ups_toml(ups)
    unit_user.give(o.workdir)
    o.start()
    wait_status(o, unit_user, "online", lambda st: ups_state(st) == "online")
    ups.silence(True)
    t0 = time.monotonic()
    wait_status(o, unit_user, "communication lost",
                lambda st: ups_state(st) == "communication_lost", timeout=10, every=0.1)
    # A poll every second, 500 ms per request: lost within about two seconds.
    assert time.monotonic() - t0 < 4
    s = wait_status(o, unit_user, "the alert", lambda st: alert(st, "ups.communication"))
    message = alert(s, "ups.communication")["message"]
    assert "has not answered" in message and f"127.0.0.1:{ups.port}" in message, message
    ups.silence(False)
    wait_status(o, unit_user, "online again", lambda st: ups_state(st) == "online", timeout=10)
    wait_for("the alert cleared", lambda: "ups.communication" not in alert_keys(
        status(o, unit_user)), timeout=10)
    assert o.alive()
    assert o.terminate() == 0


@pytest.mark.timeout(120)
def test_failed_raid_refuses_stores_but_serves_queries(unit_outposts, unit_user, tmp_path):
    """RAID degraded: an alert naming the failed member and its bay, and stores go on. RAID
    failed: stores are refused (A-ASSOCIATE-RJ transient for a pure sender, 0xA700 for a
    C-STORE on a mixed association) while queries and retrievals go on. Repaired: stores
    are accepted again."""
    o = unit_outposts("raid", start=False)
    hw = hardware_dir(o, unit_user, "raid5-clean")
    o.extra_toml = health_toml(hw)
    unit_user.give(o.workdir)
    o.start()
    first, _ = study(tmp_path, 10)
    dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *first)

    set_raid(hw, "raid5-degraded")
    unit_user.give(hw)
    s = wait_status(o, unit_user, "the degraded alert", lambda st: alert(st, "raid."))
    a = alert(s, "raid.")
    assert a["severity"] == "warning" and "degraded" in a["message"], a
    assert "replace the disk" in a["message"], a
    more, _ = study(tmp_path, 11)
    dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *more)

    set_raid(hw, "raid5-failed")
    unit_user.give(hw)
    s = wait_status(o, unit_user, "ingest held", lambda st: st["hardware"]["ingest_held"])
    assert "failed" in s["hardware"]["ingest_held"]
    refused, _ = study(tmp_path, 12)
    r = dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *refused, check=False)
    assert r.returncode != 0
    assert "Association Rejected" in r.stderr + r.stdout, r.stderr
    assert "Transient" in r.stderr + r.stdout, r.stderr
    # A mixed association (storage and query) is accepted; its C-STORE gets 0xA700.
    ae = net.make_ae("MIXED")
    ae.add_requested_context(synth.CT_IMAGE, [EXPLICIT_LE])
    ae.add_requested_context(net.STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", o.port, ae_title="OUTPOST")
    try:
        assert assoc.is_established
        rsp = assoc.send_c_store(refused[0])
        assert rsp.Status == 0xA700
        assert "not accepting instances" in str(rsp.get("ErrorComment", ""))
    finally:
        assoc.release()
        ae.shutdown()
    # What was stored is still found and retrieved.
    found = net.find_once(o.port, "S", net.query("STUDY", StudyInstanceUID=synth.uid(80, 10)))
    assert len(found.matches) == 1
    result, rec = net.get(o.port, "S", net.query("STUDY", StudyInstanceUID=synth.uid(80, 11)),
                          [(synth.CT_IMAGE, [EXPLICIT_LE])])
    assert (result.status, result.completed) == (net.SUCCESS, 2)

    set_raid(hw, "raid5-clean")
    unit_user.give(hw)
    wait_for("ingest released", lambda: status(o, unit_user)["hardware"]["ingest_held"] is None)
    dcmtk("storescu", "-aec", "OUTPOST", "127.0.0.1", o.port, *refused)
    audit = o.audit_path.read_text()
    assert '"event":"alert-raised"' in audit and '"event":"alert-cleared"' in audit
    assert o.terminate() == 0


class Webhook(http.server.BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        cls.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.timeout(120)
def test_status_json_and_webhook(unit_outposts, unit_user, ups):
    """`outpost status --json` of a running instance has every section; an alert reaches the
    webhook after the receiver first failed twice."""
    Webhook.received = []
    Webhook.fail_first = 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        o = unit_outposts("status", start=False)
        hw = hardware_dir(o, unit_user, "raid1-degraded")
        o.extra_toml = (health_toml(hw) + ups_toml(ups)
                        + f"\n[alerts]\nwebhook = \"http://127.0.0.1:{server.server_port}/hook\"\n")
        unit_user.give(o.workdir)
        o.start()
        s = wait_status(o, unit_user, "every section sampled",
                        lambda st: st["hardware"]["raid"]["reading"]
                        and st["hardware"]["smart"]["reading"]
                        and st["hardware"]["volume"]["reading"] and ups_state(st) == "online")
        assert s["version"] and s["uptime_s"] >= 0 and s["ae_title"] == "OUTPOST"
        assert s["kernel"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
        assert s["os"], s
        h = s["hardware"]
        arrays = h["raid"]["reading"]
        assert [a["health"] for a in arrays] == ["degraded"], arrays
        assert {d["device"] for d in h["smart"]["reading"]}, h["smart"]
        assert h["volume"]["reading"]["available_bytes"] > 0
        assert h["volume"]["reading"]["read_only"] is False
        assert h["ups"]["reading"]["charge_pct"] == pytest.approx(100.0, abs=0.5)
        # The human form says the same in words.
        r = subprocess.run([*unit_user.launcher(), str(OUTPOST_BIN), "status", "--config",
                            str(o.config_path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        for word in ("system:", "raid:", "degraded", "volume:", "smart:", "ups:", "online",
                     "alerts:"):
            assert word in r.stdout, r.stdout
        wait_for("the webhook got the RAID alert", lambda: any(
            n["key"].startswith("raid.") and n["event"] == "raised" for n in Webhook.received),
            timeout=20)
        n = next(n for n in Webhook.received if n["key"].startswith("raid."))
        assert n["appliance"] == "OUTPOST" and n["severity"] == "warning"
        assert "degraded" in n["message"]
        assert o.terminate() == 0
    finally:
        server.shutdown()


def test_privileged_port_needs_the_units_capability(unit_outposts, unit_user):
    """Port 104 binds with the unit's one ambient capability; without it the service says
    which capability is missing instead of failing obscurely."""
    if port_accepts(104):
        pytest.skip("something already listens on port 104")
    o = unit_outposts("port104", start=False, port=104)
    o.start()
    assert dcmtk("echoscu", "-aec", "OUTPOST", "127.0.0.1", 104).returncode == 0
    assert o.terminate() == 0
    o.launcher = unit_user.launcher(ambient=[])
    o.start(wait=False)
    assert o.proc.wait(20) != 0
    assert "CAP_NET_BIND_SERVICE" in o.log_text()


def test_unit_files_verify_and_are_hardened(tmp_path):
    """systemd itself checks the unit files, and rates the service's exposure."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = tmp_path / "units"
    units.mkdir()
    src = REPO / "configs" / "systemd"
    for name in ("outpost.service", "outpost-hwprobe.service", "outpost-hwprobe.timer"):
        text = (src / name).read_text()
        # ExecStart must name an existing program for `verify`; point it at this build.
        text = text.replace("/usr/bin/outpost", str(OUTPOST_BIN))
        text = text.replace("/usr/libexec/outpost/outpost-hwprobe", str(src / "outpost-hwprobe"))
        (units / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        *(str(units / n) for n in ("outpost.service", "outpost-hwprobe.service",
                                                   "outpost-hwprobe.timer"))],
                       capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if any(w in line for w in ("Unknown", "Invalid", "Failed to parse"))]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(units / "outpost.service")],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    exposure = [line for line in out.splitlines() if "Overall exposure level" in line]
    assert exposure, out
    level = float(exposure[0].split("level for")[1].split(":")[1].split()[0])
    # 0 is sealed, 10 is fully exposed; systemd calls below 2 "OK" and below 1 "SAFE".
    assert level <= 2.0, out


def test_hwprobe_leaves_reports_the_service_reads(unit_user, tmp_path):
    """The root helper runs smartctl for every disk `smartctl --scan` lists (stand-ins here,
    printing captured reports), names disks behind a RAID controller apart, writes the
    reports for the service's group only, and forgets disks that are gone."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    sata = FIXTURES / "smart" / "sata-qemu.json"
    nvme = FIXTURES / "smart" / "nvme-qemu.json"
    (stubs / "smartctl").write_text(f"""#!/bin/sh
case "$*" in
--scan) printf '%s\\n' '/dev/sda -d sat # /dev/sda [SAT], ATA device' \\
    '/dev/nvme0 -d nvme # /dev/nvme0, NVMe device' \\
    '/dev/bus/0 -d megaraid,3 # /dev/bus/0 [megaraid_disk_03], SCSI device' ;;
*sda*) cat {sata}; exit 4 ;;
*) cat {nvme} ;;
esac
""")
    (stubs / "smartctl").chmod(0o755)
    out = tmp_path / "hw"
    out.mkdir()
    (out / "smart-gone.json").write_text("{}")
    # No sbin on the PATH: a real mdadm (on a machine with arrays) must not add reports.
    env = {"PATH": f"{stubs}:/usr/bin:/bin"}
    r = subprocess.run([str(REPO / "configs" / "systemd" / "outpost-hwprobe"), str(out)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["smart-0-megaraid_3.json", "smart-nvme0.json", "smart-sda.json"], names
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o640, (p, oct(p.stat().st_mode))
    # A disk's findings set smartctl's exit bits; the report is kept all the same.
    assert (out / "smart-sda.json").read_bytes() == sata.read_bytes()


class SerialLine:
    """Two pseudo-terminals joined back to back, as a serial cable joins the appliance to the
    UPS: what is written to one end's device is read from the other's. The appliance's end
    gets the owner and mode udev gives a USB serial adapter (root:dialout, 0660)."""

    def __init__(self):
        import grp
        import pty
        import tty
        self._os = os
        self.ups_master, ups_slave = pty.openpty()
        self.outpost_master, outpost_slave = pty.openpty()
        # Raw from the start, so nothing is echoed or translated before a side opens it.
        for fd in (ups_slave, outpost_slave):
            tty.setraw(fd)
        self._slaves = (ups_slave, outpost_slave)
        self.ups_device = os.ttyname(ups_slave)
        self.outpost_device = os.ttyname(outpost_slave)
        os.chown(self.outpost_device, 0, grp.getgrnam("dialout").gr_gid)
        os.chmod(self.outpost_device, 0o660)
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        import select
        os = self._os
        peer = {self.ups_master: self.outpost_master, self.outpost_master: self.ups_master}
        while not self._stop:
            ready, _, _ = select.select(list(peer), [], [], 0.1)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                while data:
                    data = data[os.write(peer[fd], data):]

    def close(self):
        self._stop = True
        self._thread.join(2)
        for fd in (self.ups_master, self.outpost_master, *self._slaves):
            self._os.close(fd)


@pytest.mark.timeout(120)
def test_ups_over_a_serial_line(unit_outposts, unit_user):
    """Modbus RTU over a serial line, to pymodbus's serial server: the unit's user reads the
    UPS through the dialout group the unit gives it; without access to the device, the
    status says what to fix."""
    line = SerialLine()
    sim = UpsSimulator(serial_port=line.ups_device)
    sim.start()
    try:
        o = unit_outposts("rtu", start=False)
        o.extra_toml = ("\n[health]\nraid = false\n"
                        + "\n[ups]\ntransport = \"rtu\"\n"
                        + f"device = \"{line.outpost_device}\"\nbaud = 9600\n"
                        + "profile = \"apc-smt\"\npoll_interval_s = 1\ntimeout_ms = 800\n"
                        + "debounce_s = 1\n")
        unit_user.give(o.workdir)
        # First without the group's access: the technician is told what to do.
        os.chmod(line.outpost_device, 0o600)
        o.start()
        s = wait_status(o, unit_user, "the UPS unreadable",
                        lambda st: ups_state(st) == "communication_lost")
        assert "dialout" in s["hardware"]["ups"]["reading"]["error"], s["hardware"]["ups"]
        os.chmod(line.outpost_device, 0o660)
        s = wait_status(o, unit_user, "online over RTU", lambda st: ups_state(st) == "online")
        reading = s["hardware"]["ups"]["reading"]
        assert reading["runtime_s"] == 3600 and reading["charge_pct"] == pytest.approx(100)
        sim.on_battery(runtime_s=1500, charge_pct=70.0)
        s = wait_status(o, unit_user, "on battery over RTU",
                        lambda st: ups_state(st) == "on_battery")
        assert s["hardware"]["ups"]["reading"]["runtime_s"] == 1500
        wait_status(o, unit_user, "the on-battery alert", lambda st: alert(st, "ups.on_battery"))
        assert o.terminate() == 0
    finally:
        sim.stop()
        line.close()
