"""Shared pieces of the benchmark scripts: free ports, starting and stopping Outpost, DCMTK's
storescp and Orthanc side by side, and small statistics."""

import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
OUTPOST = pathlib.Path(os.environ.get("OUTPOST_BIN", REPO / "target/release/outpost"))
BENCH = pathlib.Path(os.environ.get("OUTPOST_BENCH_BIN", REPO / "target/release/outpost-bench"))
# DCMTK leaves Nagle's algorithm on unless told; every tool gets the same setting.
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def median(values):
    return statistics.median(values) if values else float("nan")


class Server:
    """A DICOM receiver under test; `start` returns the port, `stop` ends it."""

    name = "server"
    ae = "ANY"

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.proc = None
        self.port = None

    def data_dir(self):
        return self.workdir / f"{self.name}-data"

    def reset(self):
        shutil.rmtree(self.data_dir(), ignore_errors=True)
        self.data_dir().mkdir(parents=True)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Outpost(Server):
    ae = "OUTPOST"

    def __init__(self, workdir, durability, name=None, extra=""):
        super().__init__(workdir)
        self.durability = durability
        self.name = name or f"outpost-{durability}"
        # Further configuration sections, as TOML text.
        self.extra = extra

    def start(self):
        self.reset()
        self.port = free_port()
        cfg = self.workdir / f"{self.name}.toml"
        cfg.write_text(
            f"""
[dicom]
ae_title = "OUTPOST"
bind = "127.0.0.1"
port = {self.port}
accept_unknown_callers = true
max_associations = 64
[storage]
data_dir = "{self.data_dir()}"
durability = "{self.durability}"
min_free_mb = 0
[web]
listen = "127.0.0.1:{free_port()}"
[log]
level = "warn"
"""
            + self.extra
        )
        self.proc = subprocess.Popen(
            [str(OUTPOST), "serve", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.name}.log", "ab"),
        )
        wait_port(self.port)
        return self.port

    def count(self):
        return sum(1 for _ in (self.data_dir() / "objects").rglob("*.dcm"))


class StoreScp(Server):
    name = "storescp"
    ae = "STORESCP"

    def start(self):
        self.reset()
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["/usr/bin/storescp", "-aet", self.ae, "-od", str(self.data_dir()), str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self.port

    def count(self):
        return sum(1 for p in self.data_dir().iterdir() if p.is_file())


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Orthanc(Server):
    name = "orthanc"
    ae = "ORTHANC"

    def __init__(self, workdir, name="orthanc", ae="ORTHANC", dicomweb=False, extra=None):
        super().__init__(workdir)
        self.name, self.ae = name, ae
        self.dicomweb = dicomweb
        self.extra = extra or {}
        self.port = free_port()
        self.http = free_port()

    def url(self, path):
        return f"http://127.0.0.1:{self.http}{path}"

    def start(self):
        self.reset()
        cfg = self.workdir / f"{self.name}.json"
        config = {
            "Name": self.name,
            "StorageDirectory": str(self.data_dir() / "storage"),
            "IndexDirectory": str(self.data_dir() / "index"),
            "DicomAet": self.ae,
            "DicomPort": self.port,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "StorageCompression": False,
            "Plugins": [],
            "SaveJobs": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
        }
        if self.dicomweb:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config.update(self.extra)
        cfg.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            ["/usr/sbin/Orthanc", str(cfg)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.name}.log", "ab"),
        )
        wait_port(self.port)
        wait_port(self.http)
        return self.port

    def count(self):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics") as r:
            return json.load(r)["CountInstances"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def log(*args):
    print(*args, file=sys.stderr, flush=True)
