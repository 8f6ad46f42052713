#!/usr/bin/env python3
"""Hardware monitoring benchmark: what watching the hardware costs ingest and the machine.

Side by side in one run, several shuffled rounds: the CT series (300 x 512 KB) sent by
DCMTK storescu over 1 and 4 associations to
- Outpost with every monitor at its fastest useful interval (RAID and volume every second
  against RAID state captured from a real array, SMART every 10 s, a UPS polled every second
  over Modbus TCP from a pymodbus simulator);
- the same Outpost without monitors (no [ups], RAID off);
- DCMTK storescp, as the reference for the machine's speed in this run.
Then each Outpost idles for 30 s and its CPU time and resident memory are read from /proc.

Target: ingest with monitors >= 0.9 x without (the monitors never sit on the ingest path;
the shared machines are too noisy to resolve less).

Usage: tests/bench/health.py [--rounds N] [--workdir DIR] [--json FILE]
"""
import argparse
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

from common import REPO, Outpost, StoreScp, log, median
from ingest import corpus, ingest_rate

sys.path.insert(0, str(REPO / "tests" / "interop"))
from hwstate import health_keys, set_raid  # noqa: E402
from upssim import UpsSimulator  # noqa: E402


def monitored_toml(workdir, ups_port):
    hw = workdir / "hw"
    shutil.rmtree(hw, ignore_errors=True)
    set_raid(hw, "raid1-clean")
    keys = health_keys(hw)
    return f"""
[health]
mdstat = "{keys['mdstat']}"
sysfs_block = "{keys['sysfs_block']}"
helper_dir = "{keys['helper_dir']}"
raid_interval_s = 1
volume_interval_s = 1
smart_interval_s = 10

[ups]
transport = "tcp"
address = "127.0.0.1:{ups_port}"
profile = "apc-smt"
poll_interval_s = 1
timeout_ms = 500
"""


def cpu_and_rss(pid):
    """(user + system CPU seconds, resident kB) of a process, from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return cpu, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idling measured")
    ap.add_argument("--workdir", type=pathlib.Path)
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    workdir = a.workdir or pathlib.Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = corpus(workdir)
    with UpsSimulator() as ups:
        ups.online(runtime_s=3600)
        servers = [
            Outpost(workdir, "full", name="outpost-monitored", extra=monitored_toml(workdir, ups.port)),
            Outpost(workdir, "full", name="outpost-plain", extra="\n[health]\nraid = false\n"),
            StoreScp(workdir),
        ]
        rates = {}
        rng = random.Random(4)
        for r in range(a.rounds):
            order = [(s, n) for s in servers for n in (1, 4)]
            rng.shuffle(order)
            for server, n in order:
                rate = ingest_rate(server, files, n)
                rates.setdefault((server.name, n), []).append(rate)
                log(f"round {r + 1}: {server.name:18} {n} assoc {rate:7.0f} instances/s")
        idle = {}
        for server in servers[:2]:
            server.start()
            try:
                time.sleep(2)
                cpu0, _ = cpu_and_rss(server.proc.pid)
                time.sleep(a.idle)
                cpu1, rss = cpu_and_rss(server.proc.pid)
            finally:
                server.stop()
            idle[server.name] = {"cpu_ms_per_min": (cpu1 - cpu0) * 1000 * 60 / a.idle, "rss_kb": rss}
            log(f"idle {server.name}: {idle[server.name]}")
        requests = ups.requests

    m = {k: median(v) for k, v in rates.items()}
    print(f"\nCT series, 300 x 512 KB, medians of {a.rounds} rounds (instances/s)")
    print(f"{'receiver':20} {'1 assoc':>9} {'4 assoc':>9}")
    for s in servers:
        print(f"{s.name:20} {m[(s.name, 1)]:9.0f} {m[(s.name, 4)]:9.0f}")
    checks = [
        (f"monitored vs plain, {n} assoc", m[("outpost-monitored", n)] / m[("outpost-plain", n)], 0.9)
        for n in (1, 4)
    ]
    print()
    for name, ratio, target in checks:
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{name:34} {ratio:5.2f}x (target {target}x) {verdict}")
    for name, v in idle.items():
        print(f"idle {name:20} {v['cpu_ms_per_min']:7.1f} ms CPU per minute, {v['rss_kb'] / 1024:6.1f} MB resident")
    print(f"Modbus requests the simulator answered: {requests}")
    if a.json:
        a.json.write_text(json.dumps({
            "medians": {f"{k[0]}/{k[1]}": v for k, v in m.items()},
            "idle": idle,
            "checks": {n: {"ratio": r, "target": t} for n, r, t in checks},
        }, indent=2))


if __name__ == "__main__":
    main()
