#!/usr/bin/env python3
"""Memory bound: one large multiframe instance (US cine, 640x480 RGB x 700 frames, ~645 MB)
stored with storescu and retrieved with getscu (C-GET), against Outpost and Orthanc side by
side. Reports each server's peak resident memory (VmHWM) and the transfer times.

The core archive issue asks that memory per association follow the PDU size, never the
instance size ("a 1 GB multiframe must not need 1 GB of RAM"); Orthanc was measured at
1.9 GB peak for this instance on this machine type.

Usage: tests/bench/memory.py [--workdir DIR] [--profile huge]
"""
import argparse
import pathlib
import shutil
import subprocess
import tempfile
import time

from common import DCMTK_ENV, REPO, Orthanc, Outpost, log


def peak_rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=pathlib.Path)
    ap.add_argument("--profile", default="huge")
    a = ap.parse_args()
    workdir = a.workdir or pathlib.Path(tempfile.mkdtemp(prefix="outpost-mem-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / a.profile
    if not any(src.rglob("*.dcm")) if src.exists() else True:
        subprocess.run(["python3", str(REPO / "tests/corpus/gen_corpus.py"), str(src), "--profile", a.profile], check=True, stdout=subprocess.DEVNULL)
    files = sorted(src.rglob("*.dcm"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    import pydicom

    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    results = {}
    for server in (Outpost(workdir, "full"), Orthanc(workdir)):
        server.start()
        try:
            base = peak_rss_mb(server.proc.pid)
            t = time.perf_counter()
            subprocess.run(["/usr/bin/storescu", "-aec", server.ae, "127.0.0.1", str(server.port), *map(str, files)], env=DCMTK_ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            store_s = time.perf_counter() - t
            after_store = peak_rss_mb(server.proc.pid)
            out = workdir / f"got-{server.name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            t = time.perf_counter()
            subprocess.run(
                ["/usr/bin/getscu", "-aec", server.ae, "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.port)],
                env=DCMTK_ENV,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            get_s = time.perf_counter() - t
            got = list(out.iterdir())
            if len(got) != len(files):
                raise RuntimeError(f"{server.name}: retrieved {len(got)} of {len(files)}")
            results[server.name] = (base, after_store, peak_rss_mb(server.proc.pid), store_s, get_s)
            log(server.name, results[server.name])
        finally:
            server.stop()
    print(f"\n{len(files)} instance(s), {size_mb:.0f} MB: peak resident memory (MB) and times (s)")
    print(f"{'server':14} {'idle':>7} {'stored':>7} {'retrieved':>9} {'store s':>8} {'get s':>7}")
    for name, (base, stored, retrieved, store_s, get_s) in results.items():
        print(f"{name:14} {base:7.0f} {stored:7.0f} {retrieved:9.0f} {store_s:8.2f} {get_s:7.2f}")
    o, t = results["outpost-full"][2], results["orthanc"][2]
    print(f"\npeak memory: Orthanc / Outpost = {t / o:.1f}x; Outpost's peak is {o / size_mb:.2f} of the instance size")


if __name__ == "__main__":
    main()
