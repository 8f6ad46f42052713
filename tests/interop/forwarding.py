"""Helpers for the store-and-forward suite (test_forward.py): Orthanc as a real destination
(DICOM and DICOMweb), a picky pynetdicom Storage SCP, a small STOW-RS server, `outpost
queue`, and storing the corpus with DCMTK.

Everything runs on 127.0.0.1 only, in the test's temporary directory.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pydicom

from harness import (
    DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, RLE_LOSSLESS, Outpost, dcmtk,
    dcmtk_env, free_port, port_accepts, run_outpost,
)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
# Debian's orthanc-dicomweb puts the plugin here (a link to /usr/lib/orthanc/...). Only
# this one plugin is loaded, not the whole folder (which also holds the worklist and
# folder-serving plugins).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

# storescu options that send a file of this transfer syntax as it is stored (the same as
# test_dcmtk.py: one storescu run per syntax, so each file goes in its own syntax).
STORESCU_FLAGS = {
    EXPLICIT_LE: ["-xe"],
    IMPLICIT_LE: ["-xi"],
    EXPLICIT_BE: ["-xb"],
    DEFLATED_LE: ["-xd"],
    RLE_LOSSLESS: ["-xr"],
}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1, detail: Callable[[], str] | None = None) -> Any:
    """Polls until `predicate()` is truthy and returns its value; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"{what}: not within {timeout} s{extra}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# Orthanc


class Orthanc:
    """Debian's Orthanc 1.10 on loopback ports of its own, storage in `workdir`.

    `dicom_port` may be chosen before the server runs (a destination that is down), and the
    same object can be started again on the same ports and storage.
    """

    def __init__(self, workdir: Path, dicomweb: bool = False, aet: str = "ORTHANC",
                 extra: dict | None = None):
        self.extra = extra or {}   # more configuration keys, such as "RleTransferSyntaxAccepted"
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicomweb = dicomweb
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "orthanc.log"
        self.config_path = workdir / "orthanc.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def write_config(self) -> None:
        cfg: dict[str, Any] = {
            "Name": "outpost-forward-tests",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "SaveJobs": False,
            "HttpTimeout": 60,
            "Plugins": [],
        }
        if self.dicomweb:
            if not DICOMWEB_PLUGIN.exists():
                raise AssertionError(
                    f"{DICOMWEB_PLUGIN} is missing: install Debian's orthanc-dicomweb "
                    "(tests/run does)")
            cfg["Plugins"] = [str(DICOMWEB_PLUGIN)]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        cfg.update(self.extra)
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def start(self, timeout: float = 30) -> "Orthanc":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not ORTHANC_BIN.exists():
            raise AssertionError(f"{ORTHANC_BIN} is missing: install Debian's orthanc "
                                 "(tests/run does)")
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(ORTHANC_BIN), str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=dcmtk_env())
        deadline = time.monotonic() + timeout
        while not (port_accepts(self.dicom_port) and self._http_ready()):
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"Orthanc did not listen within {timeout} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)
        return self

    def _http_ready(self) -> bool:
        try:
            self.get("/system")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        """SIGKILL: for the end of a test, where Orthanc's graceful stop (seconds) buys
        nothing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    # -- REST ---------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance id, of everything Orthanc holds."""
        out = {}
        for inst in self.get_json("/instances?expand"):
            out[inst["MainDicomTags"]["SOPInstanceUID"]] = inst["ID"]
        return out

    def file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file", timeout=30)

    def transfer_syntax(self, orthanc_id: str) -> str:
        """The transfer syntax Orthanc stored the instance in (its file meta)."""
        return self.get(f"/instances/{orthanc_id}/metadata/TransferSyntax").decode().strip()

    def remote_aet(self, orthanc_id: str) -> str:
        return self.get(f"/instances/{orthanc_id}/metadata/RemoteAET").decode().strip()


# ---------------------------------------------------------------------------------------
# outpost queue


def queue_cli(outpost: Outpost, *args: Any, json_out: bool = False,
              timeout: float = 30) -> subprocess.CompletedProcess:
    """`outpost queue --config F [--json] ARGS` (the global options come first: clap takes
    them before the subcommand)."""
    outpost.write_config()
    cmd = ["queue", "--config", outpost.config_path]
    if json_out:
        cmd.append("--json")
    return run_outpost(*cmd, *args, timeout=timeout)


def queue_json(outpost: Outpost, *args: Any) -> Any:
    """The JSON answer of `outpost queue --json ARGS`; fails on a non-zero exit."""
    r = queue_cli(outpost, *args, json_out=True)
    if r.returncode != 0:
        raise AssertionError(f"outpost queue {' '.join(map(str, args))} exited "
                             f"{r.returncode}:\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return json.loads(r.stdout)


def queue_row(outpost: Outpost, destination: str) -> dict:
    """{"queue": {...}, "live": {...}} for one destination."""
    rows = queue_json(outpost)["queue"]
    for row in rows:
        if row["queue"]["destination"] == destination:
            return row
    raise AssertionError(f"no queue row for {destination!r}: {rows}")


def dead_letters(outpost: Outpost, destination: str, limit: int = 500) -> list:
    """[(seq, {"entry": {...}, "reason": ..., ...}), ...]"""
    return queue_json(outpost, "dead", destination, "--limit", limit)["dead"]


def row_text(row: dict) -> str:
    return json.dumps(row, indent=1)


# ---------------------------------------------------------------------------------------
# Sending


def storescu_corpus(port: int, corpus, files: list[dict] | None = None,
                    calling: str = "STORESCU", called: str = "OUTPOST") -> None:
    """Stores corpus files with DCMTK's storescu, each in its own transfer syntax (one run
    per syntax); every file must be acknowledged with Success."""
    groups: dict[str, list[dict]] = {}
    for f in files if files is not None else corpus.files:
        groups.setdefault(f["TransferSyntaxUID"], []).append(f)
    for ts, group in groups.items():
        r = dcmtk("storescu", "-v", "-aet", calling, "-aec", called, *STORESCU_FLAGS[ts],
                  "127.0.0.1", port, *corpus.paths(group))
        out = r.stdout + r.stderr
        assert out.count("Received Store Response (Success)") == len(group), out[-3000:]


def outpost_objects(outpost: Outpost) -> dict[str, bytes]:
    """SOP Instance UID -> the Part 10 file Outpost stored, for every object on its disk."""
    out = {}
    for p in outpost.object_files():
        data = p.read_bytes()
        sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        out[str(sop)] = data
    return out


# ---------------------------------------------------------------------------------------
# A Storage SCP that takes CT only


class PickyScp:
    """A pynetdicom Storage SCP (in this process) that supports only CT Image Storage, in
    every syntax of the corpus; instances of any other class find no presentation context."""

    def __init__(self, ae_title: str = "PICKY", port: int | None = None,
                 silent_commitment: bool = False, report_on_association: float | None = None):
        """With `silent_commitment`, it also accepts Storage Commitment requests (N-ACTION)
        and answers them with success, but never sends the report. With
        `report_on_association` (seconds), it accepts them too and, that long after the
        N-ACTION-RSP, sends the report (every instance committed) on the same association,
        as a PACS that cannot open one back to the appliance (NAT) must (PS3.4 J.3.3)."""
        import dicomnet as net
        from pynetdicom import evt
        from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

        from harness import ALL_CORPUS_SYNTAXES

        self.port = port or free_port()
        self.recorder = net.Recorder()
        self.commitment_requests = 0
        self.reports_sent = 0
        self.report_statuses: list[int] = []
        ae = net.make_ae(ae_title)
        ae.add_supported_context(CT_IMAGE, ALL_CORPUS_SYNTAXES)
        ae.add_supported_context(Verification, [EXPLICIT_LE, IMPLICIT_LE])
        handlers = [(evt.EVT_C_STORE, self.recorder)]
        if silent_commitment or report_on_association is not None:
            ae.add_supported_context(StorageCommitmentPushModel, [EXPLICIT_LE, IMPLICIT_LE])

            def on_action(event):
                self.commitment_requests += 1
                if report_on_association is not None:
                    request = event.action_information
                    threading.Thread(target=self._report, daemon=True,
                                     args=(event.assoc, request,
                                           report_on_association)).start()
                return 0x0000, None

            handlers.append((evt.EVT_N_ACTION, on_action))
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers)

    def _report(self, assoc, request, delay: float) -> None:
        """Sends the success report for an N-ACTION's transaction on its association."""
        import time

        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StorageCommitmentPushModel

        time.sleep(delay)
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        report.ReferencedSOPSequence = []
        for r in request.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = r.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = r.ReferencedSOPInstanceUID
            report.ReferencedSOPSequence.append(item)
        if not assoc.is_established:
            return
        status, _ = assoc.send_n_event_report(
            report, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        self.reports_sent += 1
        if status is not None and "Status" in status:
            self.report_statuses.append(int(status.Status))

    def received_uids(self) -> set[str]:
        with self.recorder.lock:
            return {r.sop_instance_uid for r in self.recorder.received}

    def stop(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


# ---------------------------------------------------------------------------------------
# A STOW-RS server


@dataclass
class StowRequest:
    path: str
    content_type: str
    uids: list[str]
    status: int


@dataclass
class StowServer:
    """A small real STOW-RS server (http.server in a thread).

    `failures` maps a SOP Instance UID to the FailureReason to answer for it (in a
    FailedSOPSequence of a 200 answer); every other instance of a request is listed in the
    ReferencedSOPSequence. GET (the forwarder's probe, a QIDO-RS query) answers `[]`.
    """

    failures: dict[str, int] = field(default_factory=dict)
    requests: list[StowRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._answer(200, b"[]")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "")
                try:
                    uids = [str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True)
                                .SOPInstanceUID) for p in parse_multipart(ctype, body)]
                except Exception as e:  # noqa: BLE001 - reported by the test
                    with server.lock:
                        server.errors.append(f"{self.path}: {e!r}")
                    self._answer(400, json.dumps({"error": repr(e)}).encode())
                    return
                answer = server.answer(uids)
                with server.lock:
                    server.requests.append(StowRequest(self.path, ctype, uids, 200))
                self._answer(200, json.dumps(answer).encode())

            def _answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def answer(self, uids: list[str]) -> dict:
        stored = [u for u in uids if u not in self.failures]
        failed = [u for u in uids if u in self.failures]
        out: dict[str, Any] = {}
        if failed:
            out["00081198"] = {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [u]},
                 "00081197": {"vr": "US", "Value": [self.failures[u]]}} for u in failed]}
        if stored:
            out["00081199"] = {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [u]}} for u in stored]}
        return out

    def seen(self, uid: str) -> int:
        """How many requests carried this instance."""
        with self.lock:
            return sum(r.uids.count(uid) for r in self.requests)

    def all_uids(self) -> set[str]:
        with self.lock:
            return {u for r in self.requests for u in r.uids}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts' contents of a multipart/related body (RFC 2046), split on the boundary
    byte for byte; every part must be application/dicom."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        raise ValueError(f"not multipart/related: {content_type!r}")
    boundary = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise ValueError(f"no boundary in {content_type!r}")
    delimiter = b"--" + boundary.encode()
    if not body.startswith(delimiter):
        raise ValueError("the body does not start with the boundary")
    parts = []
    # Every delimiter but the first is preceded by CRLF, which belongs to it.
    chunks = body[len(delimiter):].split(b"\r\n" + delimiter)
    for chunk in chunks[:-1]:
        if not chunk.startswith(b"\r\n"):
            raise ValueError("a boundary line not followed by CRLF")
        headers, sep, content = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a blank line after its headers")
        types = [h.split(b":", 1)[1].strip().lower() for h in headers.split(b"\r\n")
                 if h.lower().startswith(b"content-type:")]
        if not types or not types[0].startswith(b"application/dicom"):
            raise ValueError(f"a part of type {types!r}")
        parts.append(content)
    if not chunks[-1].startswith(b"--"):
        raise ValueError("the body does not end with the close delimiter")
    return parts


class OrthancFactory:
    """Makes Orthanc servers in a test's directory; stops them all at the end."""

    def __init__(self, base: Path):
        self.base = base
        self.made: list[Orthanc] = []

    def __call__(self, name: str = "orthanc", start: bool = True, **kw) -> Orthanc:
        o = Orthanc(self.base / name, **kw)
        self.made.append(o)
        if start:
            o.start()
        return o

    def cleanup(self, failed: bool, report=print) -> None:
        for o in self.made:
            o.kill()
            if failed:
                report(f"\n----- log of {o.workdir.name} (DICOM {o.dicom_port}, HTTP "
                       f"{o.http_port}) -----\n{o.log_tail(40)}")


# ---------------------------------------------------------------------------------------
# Comparing what arrived


def dicom_destination(name: str, port: int, ae_title: str = "ORTHANC", **kw) -> dict:
    """A [[forward.destination]] of kind "dicom" on 127.0.0.1, quick to retry and probe."""
    d = {"name": name, "kind": "dicom", "ae_title": ae_title, "host": "127.0.0.1",
         "port": port, "probe_interval_s": 1, "retry_initial_s": 1, "concurrency": 1,
         "timeout_s": 20}
    d.update(kw)
    return d


def web_destination(name: str, url: str, **kw) -> dict:
    d = {"name": name, "kind": "dicomweb", "url": url, "auth": "none",
         "probe_interval_s": 1, "retry_initial_s": 1, "timeout_s": 20}
    d.update(kw)
    return d


def comparable_dataset(part10: bytes) -> bytes:
    """The data set bytes of a Part 10 file; a deflated one inflated (a receiver that
    deflates again with its own zlib settings gives other bytes for the same data set)."""
    from harness import dataset_bytes, transfer_syntax_of

    ds = dataset_bytes(part10)
    if transfer_syntax_of(part10) == DEFLATED_LE:
        import zlib
        return zlib.decompress(ds, -15)
    return ds


@dataclass
class Arrival:
    """How one instance arrived at a destination."""
    sop: str
    stored_syntax: str      # in Outpost's archive
    received_syntax: str    # in the destination's file
    same_bytes: bool        # data set byte for byte equal to Outpost's stored one
    same_inflated: bool     # ... once inflated (only differs from same_bytes for deflate)
    decoded: list[str]      # attributes differing from the corpus file, decoded


def compare_arrivals(received: dict[str, bytes], stored: dict[str, bytes],
                     originals: dict[str, bytes]) -> list[Arrival]:
    """Compares each received Part 10 file with what Outpost stored and with the original
    corpus file (decoded: DCMTK's storescu re-encodes sequences on the way in)."""
    from harness import dataset_bytes, decoded_differences, transfer_syntax_of

    out = []
    for sop, got in sorted(received.items()):
        mine = stored[sop]
        out.append(Arrival(
            sop=sop,
            stored_syntax=transfer_syntax_of(mine),
            received_syntax=transfer_syntax_of(got),
            same_bytes=dataset_bytes(got) == dataset_bytes(mine),
            same_inflated=comparable_dataset(got) == comparable_dataset(mine),
            decoded=decoded_differences(got, originals[sop]),
        ))
    return out


def arrival_report(arrivals: list[Arrival]) -> str:
    """One line per (stored syntax -> received syntax): counts of byte-identical data sets."""
    groups: dict[tuple[str, str], list[Arrival]] = {}
    for a in arrivals:
        groups.setdefault((a.stored_syntax, a.received_syntax), []).append(a)
    lines = []
    for (s, r), group in sorted(groups.items()):
        lines.append(
            f"{s} -> {r}: {len(group)} instance(s), {sum(a.same_bytes for a in group)} "
            f"byte-identical, {sum(a.same_inflated for a in group)} identical once inflated, "
            f"{sum(not a.decoded for a in group)} decoded-identical to the corpus file")
    return "\n".join(lines)
