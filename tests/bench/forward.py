#!/usr/bin/env python3
"""Forwarding benchmark: the 300-slice CT series (512 KB per instance) forwarded upstream,
side by side in one run:

- Outpost to Orthanc over DICOM (1 and 4 parallel associations) and over STOW-RS;
- Orthanc to Orthanc with its own C-STORE job and with its DICOMweb client (STOW-RS);
- DCMTK storescu straight to Orthanc (1 and 4 associations);
- Outpost to DCMTK storescp, and storescu to storescp (a receiver that is never the
  bottleneck);
- ingest into Outpost (storescu, 1 association) with an empty outbox and with 100,000
  pending entries for a destination that is down.

Each forwarding measurement starts with the instances already stored at the sender and
ends when the sender has every acknowledgement: for Outpost, from `outpost queue resume`
(the destination was paused during ingest) until the queue is empty; for Orthanc, the
synchronous job's duration; for storescu, its run. The receiving Orthanc is wiped and
restarted before every measurement. Rounds run in shuffled order; medians and ratios of the
same run are reported.

Targets (store-and-forward issue):
- Outpost's DICOM forward >= 0.9 x storescu-direct at the same association count;
- Outpost's STOW-RS forward >= Orthanc's DICOMweb client;
- Outpost to storescp >= 0.9 x storescu to storescp;
- 100,000 pending entries slow ingest by no more than 10%.

Usage: tests/bench/forward.py [--rounds N] [--workdir DIR] [--json FILE] [--pending N]
"""
import argparse
import json
import pathlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

from common import (BENCH, DCMTK_ENV, OUTPOST, REPO, Orthanc, StoreScp, free_port, log,
                    median, run, wait_port)
from ingest import corpus


def http(method, url, body=None, timeout=600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def storescu(ae, port, files, associations):
    groups = [files[i::associations] for i in range(associations)]
    t = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", ae, "127.0.0.1", str(port),
                               *map(str, g)], env=DCMTK_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for g in groups]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t


class ForwardingOutpost:
    """An Outpost with one destination, paused while the series is ingested."""

    def __init__(self, workdir, name, destination_toml):
        self.workdir = pathlib.Path(workdir)
        self.name = name
        self.destination_toml = destination_toml
        self.port = free_port()
        self.data = self.workdir / f"{name}-data"
        self.cfg = self.workdir / f"{name}.toml"
        self.proc = None

    def write_config(self):
        self.cfg.write_text(f"""
[dicom]
ae_title = "OUTPOST"
bind = "127.0.0.1"
port = {self.port}
accept_unknown_callers = true
max_associations = 64
[storage]
data_dir = "{self.data}"
min_free_mb = 0
[web]
listen = "127.0.0.1:{free_port()}"
[log]
level = "warn"
{self.destination_toml}
""")

    def start(self, wipe=True):
        if wipe:
            shutil.rmtree(self.data, ignore_errors=True)
        self.write_config()
        self.proc = subprocess.Popen([str(OUTPOST), "serve", "--config", str(self.cfg)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / f"{self.name}.log", "ab"))
        wait_port(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None

    def control(self, request):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.data / "control.sock"))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def depth(self):
        return self.control({"cmd": "queue"})["queue"][0]["queue"]["depth"]

    def forward_time(self, expected):
        """Resumes the destination and waits until the queue is empty."""
        assert self.depth() == expected, (self.depth(), expected)
        t = time.perf_counter()
        self.control({"cmd": "resume", "destination": "up"})
        while self.depth() > 0:
            time.sleep(0.005)
        return time.perf_counter() - t


def dicom_destination(ae, port, concurrency, batch):
    return f"""
[[forward.destination]]
name = "up"
kind = "dicom"
ae_title = "{ae}"
host = "127.0.0.1"
port = {port}
concurrency = {concurrency}
batch = {batch}
"""


def stow_destination(http_port):
    return f"""
[[forward.destination]]
name = "up"
kind = "dicomweb"
url = "http://127.0.0.1:{http_port}/dicom-web"
max_request_instances = 50
"""


def outpost_forward(workdir, files, destination_toml, name):
    o = ForwardingOutpost(workdir, name, destination_toml)
    o.start()
    try:
        o.control({"cmd": "pause", "destination": "up"})
        storescu("OUTPOST", o.port, files, 1)
        return o.forward_time(len(files))
    finally:
        o.stop()


def orthanc_count(o):
    return http("GET", o.url("/statistics"))["CountInstances"]


def deep_outbox_ingest(workdir, a):
    """Ingest with a deep outbox: `pending` entries for a paused destination (`deep`),
    against the same destination paused with an empty queue (`empty`: what forwarding
    itself costs) and against no forwarding at all (`plain`). All three run through every
    round; each round sends a new series (new UIDs) to each, in shuffled order. Returns
    instances/s per arm and round."""
    destination = dicom_destination("NOBODY", free_port(), 1, 100)
    deep = ForwardingOutpost(workdir, "outpost-deep", destination)
    empty = ForwardingOutpost(workdir, "outpost-empty", destination)
    plain = ForwardingOutpost(workdir, "outpost-plain", "")
    deep_label, empty_label = f"{a.pending} pending", "0 pending"
    arms = [("no forwarding", plain), (empty_label, empty), (deep_label, deep)]
    ingest = {label: [] for label, _ in arms}
    for o, count in ((deep, a.pending), (empty, 0)):
        shutil.rmtree(o.data, ignore_errors=True)
        o.write_config()
        out = run([str(BENCH), "populate", "--data-dir", str(o.data), "--instances",
                   str(count), "--forward-config", str(o.cfg), "--pause", "up"]).stdout
        log(f"populated a {count}-entry outbox: {out.strip()}")
    rounds = a.rounds + 2
    try:
        deep.start(wipe=False)
        empty.start(wipe=False)
        plain.start()
        assert deep.depth() == a.pending, deep.depth()
        for r in range(rounds):
            for label, o in random.sample(arms, len(arms)):
                subdir = workdir / f"ingest-{r}-{o.name}"
                if not subdir.exists():
                    seed = 1000 + r * 3 + [x for _, x in arms].index(o)
                    subprocess.run(["python3", str(REPO / "tests/corpus/gen_corpus.py"),
                                    str(subdir), "--profile", "ct", "--seed", str(seed)],
                                   check=True, stdout=subprocess.DEVNULL)
                batch = sorted(subdir.rglob("*.dcm"))
                t = storescu("OUTPOST", o.port, batch, 1)
                ingest[label].append(len(batch) / t)
                log(f"ingest round {r + 1}: {label:16s} {len(batch) / t:7.1f} instances/s")
        assert deep.depth() == a.pending + len(batch) * rounds
        assert empty.depth() == len(batch) * rounds
    finally:
        for o in (deep, empty, plain):
            o.stop()
    for label, _ in arms[1:]:
        pairs = [x / y for x, y in zip(ingest[label], ingest["no forwarding"])]
        log(f"{label} / no forwarding, per round: " + " ".join(f"{p:.2f}" for p in pairs))
    pairs = [x / y for x, y in zip(ingest[deep_label], ingest[empty_label])]
    log(f"{deep_label} / {empty_label}, per round: " + " ".join(f"{p:.2f}" for p in pairs))
    return ingest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--json")
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--only", help="run only the cases whose name contains this text")
    ap.add_argument("--ingest-only", action="store_true",
                    help="run only the ingest-with-a-deep-outbox comparison")
    a = ap.parse_args()
    workdir = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="outpost-fwd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = corpus(workdir)
    n = len(files)

    receiver = Orthanc(workdir, name="receiver", ae="RECEIVER", dicomweb=True)
    sender = Orthanc(workdir, name="sender", ae="SENDER", dicomweb=True, extra={
        "DicomModalities": {"receiver": ["RECEIVER", "127.0.0.1", receiver.port]},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
            "receiver": [f"http://127.0.0.1:{receiver.http}/dicom-web/"]}},
    })
    scp = StoreScp(workdir)

    # Orthanc's sender holds the series once; its jobs are timed on every round.
    instance_ids = study_ids = []
    if not a.ingest_only:
        sender.start()
        storescu("SENDER", sender.port, files, 4)
        assert orthanc_count(sender) == n
        instance_ids = http("GET", sender.url("/instances"))
        study_ids = http("GET", sender.url("/studies"))

    def fresh_receiver():
        receiver.stop()
        receiver.start()

    def orthanc_job():
        fresh_receiver()
        t = time.perf_counter()
        http("POST", sender.url("/modalities/receiver/store"),
             {"Resources": instance_ids, "Synchronous": True})
        elapsed = time.perf_counter() - t
        assert orthanc_count(receiver) == n
        return elapsed

    def orthanc_stow():
        fresh_receiver()
        t = time.perf_counter()
        http("POST", sender.url("/dicom-web/servers/receiver/stow"),
             {"Resources": study_ids, "Synchronous": True})
        elapsed = time.perf_counter() - t
        assert orthanc_count(receiver) == n, orthanc_count(receiver)
        return elapsed

    def direct(assocs):
        def f():
            fresh_receiver()
            elapsed = storescu("RECEIVER", receiver.port, files, assocs)
            assert orthanc_count(receiver) == n
            return elapsed
        return f

    def outpost_dicom(assocs):
        def f():
            fresh_receiver()
            batch = (n + assocs - 1) // assocs
            elapsed = outpost_forward(workdir, files,
                                      dicom_destination("RECEIVER", receiver.port, assocs, batch),
                                      f"outpost-dicom{assocs}")
            assert orthanc_count(receiver) == n
            return elapsed
        return f

    def outpost_stow():
        fresh_receiver()
        elapsed = outpost_forward(workdir, files, stow_destination(receiver.http), "outpost-stow")
        assert orthanc_count(receiver) == n
        return elapsed

    def scp_direct():
        scp.stop()
        scp.start()
        elapsed = storescu(scp.ae, scp.port, files, 1)
        assert scp.count() == n
        return elapsed

    def outpost_to_scp():
        scp.stop()
        scp.start()
        elapsed = outpost_forward(workdir, files, dicom_destination(scp.ae, scp.port, 1, n),
                                  "outpost-scp")
        assert scp.count() == n
        return elapsed

    cases = {
        "storescu->orthanc 1": direct(1),
        "storescu->orthanc 4": direct(4),
        "outpost->orthanc dicom 1": outpost_dicom(1),
        "outpost->orthanc dicom 4": outpost_dicom(4),
        "orthanc->orthanc dicom": orthanc_job,
        "outpost->orthanc stow": outpost_stow,
        "orthanc->orthanc stow": orthanc_stow,
        "storescu->storescp 1": scp_direct,
        "outpost->storescp 1": outpost_to_scp,
    }
    if a.only:
        cases = {k: v for k, v in cases.items() if a.only in k}
    if a.ingest_only:
        cases = {}
    times = {k: [] for k in cases}
    try:
        for r in range(a.rounds):
            order = list(cases)
            random.shuffle(order)
            for k in order:
                t = cases[k]()
                times[k].append(t)
                log(f"round {r + 1}: {k:28s} {n / t:7.1f} instances/s")
    finally:
        receiver.stop()
        sender.stop()
        scp.stop()

    ingest = deep_outbox_ingest(workdir, a) if a.pending > 0 and not a.only else {}

    rate = {k: n / median(v) for k, v in times.items()}
    ratio = lambda x, y: rate[x] / rate[y] if x in rate and y in rate else float("nan")  # noqa: E731
    result = {
        "instances": n,
        "rounds": a.rounds,
        "rates_per_second": {k: round(v, 1) for k, v in rate.items()},
        "ingest_per_second": {k: round(median(v), 1) for k, v in ingest.items()},
        "ratios": {
            "outpost dicom 1 / storescu 1 (target >= 0.9)":
                ratio("outpost->orthanc dicom 1", "storescu->orthanc 1"),
            "outpost dicom 4 / storescu 4 (target >= 0.9)":
                ratio("outpost->orthanc dicom 4", "storescu->orthanc 4"),
            "outpost dicom 1 / orthanc job": ratio("outpost->orthanc dicom 1", "orthanc->orthanc dicom"),
            "outpost stow / orthanc stow (target >= 1.0)":
                ratio("outpost->orthanc stow", "orthanc->orthanc stow"),
            "outpost->storescp / storescu->storescp (target >= 0.9)":
                ratio("outpost->storescp 1", "storescu->storescp 1"),
        },
    }
    if ingest:
        deep, empty, plain = (median(ingest[k]) for k in (f"{a.pending} pending", "0 pending",
                                                           "no forwarding"))
        result["ratios"][f"ingest with {a.pending} pending / without forwarding (target >= 0.9)"] = (
            deep / plain)
        result["ratios"][f"ingest with {a.pending} pending / with 0 pending (the depth's own cost)"] = (
            deep / empty)
        result["ratios"]["ingest with 0 pending / without forwarding (forwarding's own cost)"] = (
            empty / plain)
    for k, v in result["ratios"].items():
        result["ratios"][k] = round(v, 2)
    print(json.dumps(result, indent=2))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
