#!/usr/bin/env python3
"""C-FIND at scale and index opening time.

1. Fills an Outpost archive with N small instances (default 1,000,000: patients of 5
   studies x 2 series x 5 images) through the real ingest path, in-process
   (`outpost-bench populate`, relaxed durability for speed; the index is the same).
2. Times opening it (`outpost-bench open`), after a clean stop and after a kill -9 in the
   middle of ingest (start-up repair included).
3. Serves it with `outpost serve` and times study-level C-FINDs by PatientID and by
   StudyInstanceUID on one open association (`outpost-bench find`).
4. Side by side at a scale Orthanc handles in reasonable time (default 10,000 instances):
   the same instances stored into Orthanc and a fresh Outpost with storescu, and the same
   queries timed against both.

Target (core archive issue): with 1,000,000 instances, study-level lookups by PatientID or
StudyInstanceUID under 2 ms median, and opening the index under 1 s.

Usage: tests/bench/find_scale.py [--instances N] [--peer-instances M] [--workdir DIR]
"""
import argparse
import pathlib
import re
import signal
import subprocess
import tempfile
import time

from common import BENCH, DCMTK_ENV, Orthanc, Outpost, log, median, run

PER_PATIENT = 50


def parse(out, key):
    return float(re.search(rf"{key}=([0-9.]+)", out).group(1))


def find(port, patients, ae="OUTPOST", queries=500):
    out = run([str(BENCH), "find", "--addr", f"127.0.0.1:{port}", "--called", ae, "--patients", str(patients), "--queries", str(queries)]).stdout
    result = {}
    for line in out.splitlines():
        by = re.search(r"by=(\w+)", line).group(1)
        result[by] = {"median_ms": parse(line, "median_ms"), "p90_ms": parse(line, "p90_ms")}
    return result


def open_ms(data_dir, rounds=3):
    return median([parse(run([str(BENCH), "open", "--data-dir", str(data_dir)]).stdout, "open_ms") for _ in range(rounds)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=1_000_000)
    ap.add_argument("--peer-instances", type=int, default=10_000)
    ap.add_argument("--workdir", type=pathlib.Path)
    a = ap.parse_args()
    workdir = a.workdir or pathlib.Path(tempfile.mkdtemp(prefix="outpost-find-"))
    workdir.mkdir(parents=True, exist_ok=True)

    big = Outpost(workdir, "relaxed")
    big.name = "outpost-scale"
    marker = workdir / f"populated-{a.instances}"
    if not marker.exists():
        big.reset()
        log(f"populating {a.instances} instances (once; reused by later runs in this workdir)")
        out = run([str(BENCH), "populate", "--data-dir", str(big.data_dir()), "--instances", str(a.instances)]).stdout
        log(out.strip())
        marker.write_text(out)
    index_mb = (big.data_dir() / "index.redb").stat().st_size / 1e6
    clean_open = open_ms(big.data_dir())

    # A crash in the middle of ingest: start-up then repairs what was in flight.
    patients = a.instances // PER_PATIENT
    victim = subprocess.Popen(
        [str(BENCH), "populate", "--data-dir", str(big.data_dir()), "--instances", "100000", "--first-patient", str(patients + 1000), "--full"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    crash_open = parse(run([str(BENCH), "open", "--data-dir", str(big.data_dir())]).stdout, "open_ms")

    port = big_start(big)
    try:
        scale = find(port, patients)
    finally:
        big.stop()

    # Side by side with Orthanc at a smaller scale, same instances, same queries.
    files = workdir / f"files-{a.peer_instances}"
    if not files.exists():
        run([str(BENCH), "write-files", "--dir", str(files), "--instances", str(a.peer_instances)])
    peers = {}
    for server in (Outpost(workdir, "full"), Orthanc(workdir)):
        server.start()
        try:
            log(f"storing {a.peer_instances} instances into {server.name}")
            subprocess.run(
                ["/usr/bin/storescu", "-aec", server.ae, "+sd", "127.0.0.1", str(server.port), str(files)],
                env=DCMTK_ENV,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            peers[server.name] = find(server.port, a.peer_instances // PER_PATIENT, server.ae, queries=200)
        finally:
            server.stop()

    print(f"\nC-FIND, study level, one open association ({a.instances} instances indexed, index {index_mb:.0f} MB)")
    for by, r in scale.items():
        verdict = "ok" if r["median_ms"] < 2 else "ABOVE TARGET"
        print(f"  by {by:17} median {r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms (target < 2 ms) {verdict}")
    print(f"opening the index: {clean_open:.1f} ms after a clean stop, {crash_open:.1f} ms after kill -9 (target < 1000 ms)")
    print(f"\nside by side at {a.peer_instances} instances (median ms):")
    for by in ("PatientID", "StudyInstanceUID"):
        o, t = peers["outpost-full"][by]["median_ms"], peers["orthanc"][by]["median_ms"]
        print(f"  by {by:17} outpost {o:.3f}  orthanc {t:.3f}  ratio {t / o:.1f}x")


def big_start(server):
    """Serves the populated archive without wiping it."""
    server.reset = lambda: None
    return server.start()


if __name__ == "__main__":
    main()
