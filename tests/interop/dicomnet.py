"""pynetdicom clients and servers for the interop tests, and raw PDU bytes for bad input.

Storage requests send a Part 10 file's data set exactly as it is in the file
(pynetdicom's STORE_SEND_CHUNKED_DATASET), on a presentation context proposing only that
file's transfer syntax, so what reaches Outpost is byte for byte what the file holds.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from harness import ALL_CORPUS_SYNTAXES, split_part10

# Send a file's data set as it is in the file: no decoding, no re-encoding.
_config.STORE_SEND_CHUNKED_DATASET = True

FIND = {"P": PatientRootQueryRetrieveInformationModelFind,
        "S": StudyRootQueryRetrieveInformationModelFind}
GET = {"P": PatientRootQueryRetrieveInformationModelGet,
       "S": StudyRootQueryRetrieveInformationModelGet}
MOVE = {"P": PatientRootQueryRetrieveInformationModelMove,
        "S": StudyRootQueryRetrieveInformationModelMove}

SUCCESS, PENDING, PENDING_WARNING, CANCEL = 0x0000, 0xFF00, 0xFF01, 0xFE00


def make_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 15
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    ae.maximum_pdu_size = 0  # no limit on what Outpost sends us
    return ae


@contextlib.contextmanager
def association(port: int, contexts: Iterable[tuple[str, list[str]]], *,
                ae_title: str = "PYNETDICOM", called: str = "OUTPOST",
                roles: Iterable[str] = (), handlers=(), dimse_timeout: float = 30) -> Iterator:
    """An established association; `roles` are SOP classes we ask to be SCP for (C-GET)."""
    ae = make_ae(ae_title)
    ae.dimse_timeout = dimse_timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    ext = [build_role(uid, scp_role=True) for uid in roles]
    assoc = ae.associate("127.0.0.1", port, ae_title=called, ext_neg=ext or None,
                         evt_handlers=list(handlers))
    if not assoc.is_established:
        ae.shutdown()
        raise AssertionError(
            f"association to 127.0.0.1:{port} as {ae_title} was not established "
            f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def park(assoc) -> None:
    """Works around a race in pynetdicom 3.0.4 (pydicom/pynetdicom#875, "Received unexpected
    C-FIND service message"): its reactor thread, woken for the end of the previous
    operation, can take the first response of the next one off the queue and drop it. Park
    the reactor (checkpoint cleared, and seen paused twice a few milliseconds apart, so it
    sits in its wait) before starting an operation; send_*() then finds it paused."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.003)
            if assoc._is_paused:
                return
        time.sleep(0.0005)
    raise AssertionError("pynetdicom's reactor did not pause")


def echo(port: int, ae_title: str = "ECHOSCU") -> int:
    """Status of a C-ECHO on a new association; raises if the association fails."""
    with association(port, [(Verification, ["1.2.840.10008.1.2"])], ae_title=ae_title) as a:
        park(a)
        status = a.send_c_echo()
        assert "Status" in status, "no C-ECHO response"
        return int(status.Status)


# -- storage ---------------------------------------------------------------------------


def meta_of(path: Path) -> tuple[str, str, str]:
    """(SOP class, SOP instance, transfer syntax) from a Part 10 file's meta group."""
    with open(path, "rb") as f:
        head = f.read(4096)
    meta, _ = split_part10(head)
    uid = lambda tag: meta[tag].rstrip(b"\0 ").decode()  # noqa: E731
    return uid(0x00020002), uid(0x00020003), uid(0x00020010)


def store_files(port: int, paths: list[Path], ae_title: str = "PYSTORESCU",
                assoc=None) -> dict[Path, int | None]:
    """C-STOREs each file in its own transfer syntax; path -> status (None: no response)."""
    metas = {p: meta_of(p) for p in paths}
    if assoc is None:
        contexts = sorted({(c, ts) for c, _, ts in metas.values()})
        assert len(contexts) <= 128, "too many presentation contexts for one association"
        with association(port, [(c, [ts]) for c, ts in contexts], ae_title=ae_title) as a:
            return store_files(port, paths, assoc=a)
    out: dict[Path, int | None] = {}
    for p in paths:
        park(assoc)
        status = assoc.send_c_store(p)
        out[p] = int(status.Status) if "Status" in status else None
    return out


# -- query -----------------------------------------------------------------------------


@dataclass
class FindResult:
    status: int                      # the final status
    matches: list[Dataset]           # identifiers of the pending responses
    final: Dataset                   # the final status data set (ErrorComment etc.)
    raw: list[bytes] = field(default_factory=list)  # identifiers as received (find_raw)


LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV",
            b"SV", b"UV")


def walk_explicit_le(data: bytes) -> dict[int, bytes]:
    """Top-level elements of an Explicit VR Little Endian data set: tag -> value bytes
    (sequences of undefined length are skipped over, their value left out)."""
    out: dict[int, bytes] = {}
    end = _walk(data, 0, len(data), out)
    assert end == len(data), f"data set has {len(data) - end} trailing bytes"
    return out


def _walk(data: bytes, off: int, end: int, out: dict | None) -> int:
    """Walks elements from `off`; stops at `end` or after an item/sequence delimiter."""
    while off + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, off)
        if group == 0xFFFE:  # an item delimiter ends the item being walked
            return off + 8
        vr = data[off + 4:off + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, off + 8)
            at = off + 12
        else:
            (length,) = struct.unpack_from("<H", data, off + 6)
            at = off + 8
        if length == 0xFFFFFFFF:
            off = _skip_items(data, at, end)
            continue
        if out is not None:
            out[(group << 16) | elem] = data[at:at + length]
        off = at + length
    return off


def _skip_items(data: bytes, off: int, end: int) -> int:
    """Skips the items of an undefined-length sequence; returns where it ends."""
    while off + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", data, off)
        off += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return off
        assert (group, elem) == (0xFFFE, 0xE000), "expected an item"
        off = _walk(data, off, end, None) if length == 0xFFFFFFFF else off + length
    raise AssertionError("sequence without its delimiter")


def find_raw(port: int, model: str, query: Dataset, ae_title: str = "PYFINDSCU") -> FindResult:
    """C-FIND on Explicit VR Little Endian, keeping each response identifier's bytes as
    they came off the wire (pydicom would decode text on reading)."""
    raw: list[bytes] = []

    def on_recv(event):
        msg = event.message
        if type(msg).__name__ == "C_FIND_RSP" and msg.data_set is not None:
            data = msg.data_set.getvalue()
            if data:
                raw.append(data)

    with association(port, [(FIND[model], ["1.2.840.10008.1.2.1"])], ae_title=ae_title,
                     handlers=[(evt.EVT_DIMSE_RECV, on_recv)]) as a:
        r = find(a, model, query)
    r.raw = raw
    return r


def find(assoc, model: str, query: Dataset, msg_id: int = 1) -> FindResult:
    matches, final = [], None
    park(assoc)
    for status, identifier in assoc.send_c_find(query, FIND[model], msg_id=msg_id):
        if "Status" not in status:
            raise AssertionError("C-FIND: no response (association aborted or timed out)")
        if status.Status in (PENDING, PENDING_WARNING):
            matches.append(identifier)
        else:
            final = status
    return FindResult(int(final.Status), matches, final)


def find_once(port: int, model: str, query: Dataset, ae_title: str = "PYFINDSCU") -> FindResult:
    with association(port, [(FIND[model], ["1.2.840.10008.1.2.1"])], ae_title=ae_title) as a:
        return find(a, model, query)


def query(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# -- retrieval -------------------------------------------------------------------------


@dataclass
class Received:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    dataset: bytes           # the data set bytes exactly as they arrived
    move_originator: str | None = None

    def part10(self) -> bytes:
        """A Part 10 file around the received data set (for decoding with pydicom)."""
        from pydicom.filewriter import write_file_meta_info
        from pydicom.dataset import FileMetaDataset
        import io
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class_uid
        meta.MediaStorageSOPInstanceUID = self.sop_instance_uid
        meta.TransferSyntaxUID = self.transfer_syntax
        buf = io.BytesIO()
        buf.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(buf, meta, enforce_standard=True)
        return buf.getvalue() + self.dataset


class Recorder:
    """A C-STORE handler that keeps every data set's bytes as received."""

    def __init__(self, status: int = SUCCESS):
        self.received: list[Received] = []
        self.status = status
        self.lock = threading.Lock()

    def __call__(self, event) -> int:
        rq = event.request
        r = Received(str(rq.AffectedSOPInstanceUID), str(rq.AffectedSOPClassUID),
                     str(event.context.transfer_syntax), rq.DataSet.getvalue(),
                     rq.MoveOriginatorApplicationEntityTitle)
        with self.lock:
            self.received.append(r)
        return self.status

    def by_uid(self) -> dict[str, Received]:
        with self.lock:
            out = {r.sop_instance_uid: r for r in self.received}
            assert len(out) == len(self.received), "an instance arrived twice"
            return out


@dataclass
class RetrieveResult:
    status: int
    completed: int | None
    failed: int | None
    warning: int | None
    final: Dataset
    identifier: Dataset | None
    pendings: int = 0


def _retrieve_responses(responses) -> RetrieveResult:
    final, ident, pendings = None, None, 0
    for status, identifier in responses:
        if "Status" not in status:
            raise AssertionError("retrieve: no response (association aborted or timed out)")
        if status.Status in (PENDING, PENDING_WARNING):
            pendings += 1
            continue
        final, ident = status, identifier
    get = lambda kw: int(getattr(final, kw)) if kw in final else None  # noqa: E731
    return RetrieveResult(int(final.Status), get("NumberOfCompletedSuboperations"),
                          get("NumberOfFailedSuboperations"),
                          get("NumberOfWarningSuboperations"), final, ident, pendings)


def get(port: int, model: str, identifier: Dataset, storage: Iterable[tuple[str, list[str]]],
        ae_title: str = "PYGETSCU", separate: bool = True) -> tuple[RetrieveResult, Recorder]:
    """C-GET with SCP role selection for the storage classes given (class, syntaxes).

    With `separate`, every (class, syntax) pair gets its own presentation context, so
    Outpost can send each instance in whichever of them it is stored in.
    """
    storage = list(storage)
    contexts = [(GET[model], ["1.2.840.10008.1.2.1"])]
    for sop, syntaxes in storage:
        if separate:
            contexts += [(sop, [ts]) for ts in syntaxes]
        else:
            contexts.append((sop, list(syntaxes)))
    assert len(contexts) <= 128
    rec = Recorder()
    with association(port, contexts, ae_title=ae_title, roles=[s for s, _ in storage],
                     handlers=[(evt.EVT_C_STORE, rec)]) as a:
        park(a)
        result = _retrieve_responses(a.send_c_get(identifier, GET[model]))
    return result, rec


def move(port: int, model: str, identifier: Dataset, destination: str,
         ae_title: str = "PYMOVESCU") -> RetrieveResult:
    with association(port, [(MOVE[model], ["1.2.840.10008.1.2.1"])], ae_title=ae_title) as a:
        park(a)
        return _retrieve_responses(a.send_c_move(identifier, destination, MOVE[model]))


class StorageSCP:
    """A pynetdicom Storage SCP accepting every storage class in every corpus syntax."""

    def __init__(self, ae_title: str, port: int, syntaxes: list[str] | None = None):
        self.port = port
        self.recorder = Recorder()
        ae = make_ae(ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes or ALL_CORPUS_SYNTAXES)
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.recorder)])

    def stop(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


# -- raw PDUs ---------------------------------------------------------------------------

VERIFICATION = "1.2.840.10008.1.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(u: str) -> bytes:
    """A UID in a command set: padded with NUL to an even length."""
    b = u.encode()
    return b + b"\0" if len(b) % 2 else b


def associate_rq(called: str = "OUTPOST", calling: str = "RAWSCU", max_pdu: int = 16384,
                 abstract: str = VERIFICATION, syntaxes=("1.2.840.10008.1.2",)) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing one presentation context (id 1)."""
    # UIDs in PDU items are not padded (PS3.8 9.3.2.2).
    pc = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract.encode())
    for ts in syntaxes:
        pc += _item(0x40, ts.encode())
    user = (_item(0x51, struct.pack(">I", max_pdu))
            + _item(0x52, b"1.2.826.0.1.3680043.10.543.99"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + b"\0" * 32 + _item(0x10, APP_CONTEXT.encode()) + _item(0x20, pc)
            + _item(0x50, user))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _el(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value)) + value


def echo_rq_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set, Implicit VR Little Endian, with its group length."""
    rest = (_el(0, 0x0002, _uid(VERIFICATION)) + _el(0, 0x0100, struct.pack("<H", 0x0030))
            + _el(0, 0x0110, struct.pack("<H", message_id))
            + _el(0, 0x0800, struct.pack("<H", 0x0101)))
    return _el(0, 0x0000, struct.pack("<I", len(rest))) + rest


def p_data(pc_id: int, payload: bytes, command: bool, last: bool = True) -> bytes:
    header = (0x01 if command else 0) | (0x02 if last else 0)
    pdv = struct.pack(">IBB", len(payload) + 2, pc_id, header) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + b"\0" * 4


def read_pdu(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes] | None:
    """The next PDU as (type, body), or None when the peer closed the connection."""
    sock.settimeout(timeout)

    def exact(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    head = exact(6)
    if head is None:
        return None
    kind, _, length = struct.unpack(">BBI", head)
    body = exact(length)
    if body is None:
        return None
    return kind, body


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes the connection (reading and discarding), or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < timeout:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    return None


def ac_max_pdu(ac_body: bytes) -> int | None:
    """The Maximum Length the acceptor announced in its A-ASSOCIATE-AC."""
    off = 68
    while off + 4 <= len(ac_body):
        kind, _, length = struct.unpack_from(">BBH", ac_body, off)
        if kind == 0x50:
            sub = off + 4
            while sub + 4 <= off + 4 + length:
                sk, _, sl = struct.unpack_from(">BBH", ac_body, sub)
                if sk == 0x51:
                    return struct.unpack_from(">I", ac_body, sub + 4)[0]
                sub += 4 + sl
        off += 4 + length
    return None


def raw_associate(port: int, **kw) -> tuple[socket.socket, bytes]:
    """A raw socket with an accepted association; returns it and the A-ASSOCIATE-AC body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(associate_rq(**kw))
    pdu = read_pdu(s)
    assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu!r}"
    return s, pdu[1]


def raw_echo(sock: socket.socket, message_id: int = 1) -> int:
    """Sends a C-ECHO-RQ on a raw association (context 1) and returns the status."""
    sock.sendall(p_data(1, echo_rq_command(message_id), command=True))
    pdu = read_pdu(sock)
    assert pdu is not None and pdu[0] == 0x04, f"expected P-DATA-TF, got {pdu!r}"
    payload = pdu[1][6:]  # one PDV: length(4) id(1) header(1)
    off = 0
    while off + 8 <= len(payload):
        g, e, n = struct.unpack_from("<HHI", payload, off)
        if (g, e) == (0, 0x0900):
            return struct.unpack_from("<H", payload, off + 8)[0]
        off += 8 + n
    raise AssertionError(f"no status in C-ECHO-RSP {payload.hex()}")


# -- a raw C-FIND client (no pynetdicom in the way) -------------------------------------

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
TAG_VR = {0x00080018: b"UI", 0x00080052: b"CS", 0x0020000D: b"UI", 0x0020000E: b"UI",
          0x00100020: b"LO"}


def _explicit_el(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def find_rq_command(message_id: int, sop_class: str = STUDY_ROOT_FIND) -> bytes:
    rest = (_el(0, 0x0002, _uid(sop_class)) + _el(0, 0x0100, struct.pack("<H", 0x0020))
            + _el(0, 0x0110, struct.pack("<H", message_id))
            + _el(0, 0x0700, struct.pack("<H", 0))
            + _el(0, 0x0800, struct.pack("<H", 0x0102)))
    return _el(0, 0x0000, struct.pack("<I", len(rest))) + rest


def _command_fields(command: bytes) -> dict[int, bytes]:
    fields, o = {}, 0
    while o < len(command):
        _, e, n = struct.unpack_from("<HHI", command, o)
        fields[e] = command[o + 8:o + 8 + n]
        o += 8 + n
    return fields


def raw_find(sock: socket.socket, message_id: int, keys: dict[int, str]
             ) -> tuple[int, list[dict[int, bytes]]]:
    """A C-FIND on a raw association (context 1: Study Root FIND, Explicit VR LE); `keys`
    maps tags (of TAG_VR) to values. Returns the final status and every pending identifier
    as tag -> value bytes, exactly as received."""
    ident = b"".join(_explicit_el(t, TAG_VR[t], keys[t].encode()) for t in sorted(keys))
    sock.sendall(p_data(1, find_rq_command(message_id), command=True))
    sock.sendall(p_data(1, ident, command=False))
    matches: list[dict[int, bytes]] = []
    command, data, want_data = b"", b"", False
    while True:
        pdu = read_pdu(sock, timeout=30)
        assert pdu is not None and pdu[0] == 0x04, f"expected P-DATA-TF, got {pdu!r}"
        body, off = pdu[1], 0
        while off < len(body):
            (length,) = struct.unpack_from(">I", body, off)
            control = body[off + 5]
            value = body[off + 6:off + 4 + length]
            off += 4 + length
            if control & 1:
                command += value
                if not control & 2:
                    continue
                fields = _command_fields(command)
                command = b""
                assert struct.unpack("<H", fields[0x0120])[0] == message_id
                status = struct.unpack("<H", fields[0x0900])[0]
                has_data = struct.unpack("<H", fields[0x0800])[0] != 0x0101
                if status not in (PENDING, PENDING_WARNING):
                    assert not has_data, "a final C-FIND-RSP with an identifier"
                    return status, matches
                assert has_data, "a pending C-FIND-RSP without an identifier"
                want_data = True
            else:
                assert want_data, "a data fragment nobody announced"
                data += value
                if control & 2:
                    matches.append(walk_explicit_le(data))
                    data, want_data = b"", False


def raw_release(sock: socket.socket) -> None:
    sock.sendall(RELEASE_RQ)
    pdu = read_pdu(sock, timeout=10)
    assert pdu is not None and pdu[0] == 0x06, f"expected A-RELEASE-RP, got {pdu!r}"
    sock.close()


def _text(v: bytes) -> str:
    return v.rstrip(b"\0 ").decode()


def walk_images(port: int, studies: Iterable[str], ae_title: str = "RAWFIND") -> dict[str, str]:
    """SOP Instance UID -> study UID of every instance C-FIND finds in the studies, walking
    SERIES > IMAGE on one raw association (no pynetdicom: see `park`)."""
    sock, _ = raw_associate(port, calling=ae_title, abstract=STUDY_ROOT_FIND,
                            syntaxes=("1.2.840.10008.1.2.1",))
    found: dict[str, str] = {}
    mid = 0
    for study in studies:
        mid += 1
        status, series = raw_find(sock, mid, {0x00080052: "SERIES", 0x0020000D: study,
                                              0x0020000E: ""})
        assert status == SUCCESS, f"SERIES query: {status:#06x}"
        for s in series:
            mid += 1
            status, images = raw_find(sock, mid, {
                0x00080052: "IMAGE", 0x0020000D: study, 0x0020000E: _text(s[0x0020000E]),
                0x00080018: ""})
            assert status == SUCCESS, f"IMAGE query: {status:#06x}"
            for m in images:
                sop = _text(m[0x00080018])
                assert sop not in found, f"{sop} found twice"
                found[sop] = study
    raw_release(sock)
    return found


def count_images(port: int, study_uids: Iterable[str]) -> int:
    """Instances C-FIND finds in the given studies (SERIES > IMAGE, raw client)."""
    return len(walk_images(port, study_uids))
