"""Outpost against DCMTK's command-line tools (Debian's dcmtk, called by full path).

One Outpost serves the whole module with accept_unknown_callers = false: every DCMTK tool
uses an AE title listed in [[dicom.remote]], and an unlisted one is refused.

What storescu sends is not always the file's own bytes: DCMTK re-encodes the data set on
the way out (sequences and items of undefined length get explicit lengths, a deflated
data set is deflated again by DCMTK's zlib). So the reference for "byte for byte" here is
what DCMTK put on the wire, captured by sending the same files with the same options to a
bit-preserving DCMTK storescp (+B) first. Where DCMTK leaves a file's data set unchanged
(MR, CR, US, big endian), the test also checks that the capture equals the original file.
The pynetdicom suite compares with the original files themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest

from harness import (
    DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, RLE_LOSSLESS, DcmtkServer,
    assert_same_dataset, dataset_bytes, dcmtk, decoded_differences, free_port,
    transfer_syntax_of,
)

# storescu options that send a file of this transfer syntax as it is stored.
STORESCU_FLAGS = {
    EXPLICIT_LE: ["-xe"],
    IMPLICIT_LE: ["-xi"],
    EXPLICIT_BE: ["-xb"],
    DEFLATED_LE: ["-xd"],
    RLE_LOSSLESS: ["-xr"],
}
# getscu options under which it accepts that transfer syntax for storage sub-operations.
GETSCU_PREFER = {EXPLICIT_BE: "+xb", DEFLATED_LE: "+xd", RLE_LOSSLESS: "+xr"}

CALLERS = ["STORESCU", "FINDSCU", "GETSCU", "MOVESCU", "ECHOSCU"]


class Env:
    """The module's Outpost, the corpus and what storescu sent."""

    def __init__(self, outpost, corpus, work: Path):
        self.outpost = outpost
        self.corpus = corpus
        self.work = work
        self.store_runs: dict[str, tuple[int, str]] = {}
        self.sent: dict[str, bytes] = {}          # SOP UID -> data set DCMTK sent
        self.sent_syntax: dict[str, str] = {}     # SOP UID -> syntax DCMTK sent it in
        self._n = 0

    def fresh_dir(self, name: str) -> Path:
        self._n += 1
        d = self.work / f"{name}-{self._n}"
        d.mkdir(parents=True)
        return d


@pytest.fixture(scope="module")
def env(module_outposts, small_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("dcmtk")
    storescp_port = free_port()
    outpost = module_outposts(
        "dcmtk",
        dicom={"accept_unknown_callers": False},
        remotes=[{"ae_title": ae, "host": "127.0.0.1", "port": free_port()} for ae in CALLERS]
        + [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp_port}])
    e = Env(outpost, small_corpus, work)
    e.storescp_port = storescp_port

    # 1. What storescu puts on the wire, per transfer syntax group, captured by a
    #    bit-preserving storescp that accepts every syntax.
    tap_dir = work / "tap"
    tap_dir.mkdir()
    tap_port = free_port()
    tap = DcmtkServer("storescp", ["-aet", "TAP", "+B", "+xa", "-od", tap_dir, tap_port],
                      tap_port, work / "tap.log")
    try:
        for ts, files in small_corpus.by_syntax().items():
            dcmtk("storescu", "-aet", "STORESCU", "-aec", "TAP", *STORESCU_FLAGS[ts],
                  "127.0.0.1", tap_port, *small_corpus.paths(files))
    finally:
        tap.stop()
    for p in tap_dir.iterdir():
        sop = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        e.sent[sop] = dataset_bytes(p)
        e.sent_syntax[sop] = transfer_syntax_of(p)

    # 2. The same storescu commands against Outpost.
    for ts, files in small_corpus.by_syntax().items():
        r = dcmtk("storescu", "-v", "-aet", "STORESCU", "-aec", "OUTPOST", *STORESCU_FLAGS[ts],
                  "127.0.0.1", outpost.port, *small_corpus.paths(files), check=False)
        e.store_runs[ts] = (r.returncode, r.stdout + r.stderr)
    return e


def findscu(env: Env, model: str, *keys: str, log: list | None = None) -> list[pydicom.Dataset]:
    """Runs findscu -X and returns the response identifiers it wrote."""
    out = env.fresh_dir("find")
    r = dcmtk("findscu", "-v", "-aet", "FINDSCU", "-aec", "OUTPOST", model, "-X",
              *[a for k in keys for a in ("-k", k)], "127.0.0.1", env.outpost.port, cwd=out)
    if log is not None:
        log.append(r.stdout + r.stderr)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def received(directory: Path) -> dict[str, Path]:
    out = {}
    for p in directory.iterdir():
        out[pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID] = p
    return out


# ---------------------------------------------------------------------------------------


def test_echoscu(env):
    r = dcmtk("echoscu", "-v", "-aet", "ECHOSCU", "-aec", "OUTPOST", "127.0.0.1",
              env.outpost.port)
    assert "Received Echo Response (Success)" in r.stdout + r.stderr


def test_storescu_every_file_in_its_own_syntax(env, small_corpus):
    by_syntax = small_corpus.by_syntax()
    assert set(by_syntax) == set(STORESCU_FLAGS), "the corpus has the five documented syntaxes"
    for ts, files in by_syntax.items():
        rc, out = env.store_runs[ts]
        assert rc == 0, f"storescu ({ts}) exited {rc}:\n{out[-3000:]}"
        assert out.count("Received Store Response (Success)") == len(files), out[-3000:]
        assert "Store Failed" not in out and "Warning" not in out, out[-3000:]
    # Every file went out in the syntax it is stored in (checked on the tap).
    assert len(env.sent) == 38
    for f in small_corpus.files:
        assert env.sent_syntax[f["SOPInstanceUID"]] == f["TransferSyntaxUID"], f["path"]
    # Where DCMTK does not re-encode, what it sent is the file's own data set.
    for f in small_corpus.files:
        if f["Modality"] in ("MR", "CR", "US"):
            assert_same_dataset(env.sent[f["SOPInstanceUID"]],
                                dataset_bytes(small_corpus.path(f)), f["path"])
    line = env.outpost.wait_log(r"association STORESCU@.* 34 stored, 0 duplicates, 0 refused")
    assert "released" in line


def _patients(corpus):
    out = {}
    for f in corpus.files:
        key = (f["PatientID"], f["IssuerOfPatientID"] or "")
        p = out.setdefault(key, {"name": f["PatientName"], "studies": set(), "series": set(),
                                 "instances": 0})
        p["studies"].add(f["StudyInstanceUID"])
        p["series"].add(f["SeriesInstanceUID"])
        p["instances"] += 1
    return out


def test_findscu_patient_level(env, small_corpus):
    rsps = findscu(env, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "IssuerOfPatientID",
                   "PatientName", "NumberOfPatientRelatedStudies",
                   "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
    expected = _patients(small_corpus)
    got = {(r.PatientID, r.get("IssuerOfPatientID", "") or ""): r for r in rsps}
    assert len(rsps) == 3 and set(got) == set(expected)
    for key, want in expected.items():
        r = got[key]
        assert str(r.PatientName) == want["name"], key
        assert int(r.NumberOfPatientRelatedStudies) == len(want["studies"]), key
        assert int(r.NumberOfPatientRelatedSeries) == len(want["series"]), key
        assert int(r.NumberOfPatientRelatedInstances) == want["instances"], key
    # Study Root has no PATIENT level: refused with 0xA900, no match sent.
    log: list = []
    assert findscu(env, "-S", "QueryRetrieveLevel=PATIENT", "PatientID", log=log) == []
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in log[0], log[0]


@pytest.mark.parametrize("model", ["-P", "-S"])
def test_findscu_study_level(env, small_corpus, model):
    studies = small_corpus.studies()
    keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", "IssuerOfPatientID",
            "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
    if model == "-P":
        # Patient Root needs the patient's unique key; OUTPOST-0001 names two patients
        # (issuers HOSP_A and HOSP_B), so it matches three studies, the issuer narrows it.
        rsps = findscu(env, model, *keys[:2], "PatientID=OUTPOST-0001", *keys[3:])
        want = {u for u, fs in studies.items() if fs[0]["PatientID"] == "OUTPOST-0001"}
        assert len(want) == 3
        narrowed = findscu(env, model, *keys[:2], "PatientID=OUTPOST-0001",
                           "IssuerOfPatientID=HOSP_B", *keys[4:])
        assert [r.StudyInstanceUID for r in narrowed] == [
            u for u, fs in studies.items() if fs[0]["IssuerOfPatientID"] == "HOSP_B"]
    else:
        rsps = findscu(env, model, *keys)
        want = set(studies)
        assert len(want) == 4
    got = {r.StudyInstanceUID: r for r in rsps}
    assert len(rsps) == len(want) and set(got) == want
    for uid in want:
        files = studies[uid]
        r = got[uid]
        assert r.PatientID == files[0]["PatientID"]
        assert (r.get("IssuerOfPatientID") or None) == files[0]["IssuerOfPatientID"]
        assert int(r.NumberOfStudyRelatedInstances) == len(files)
        assert int(r.NumberOfStudyRelatedSeries) == len({f["SeriesInstanceUID"] for f in files})
        mods = r.ModalitiesInStudy
        mods = [mods] if isinstance(mods, str) else list(mods)
        assert sorted(mods) == sorted({f["Modality"] for f in files})


@pytest.mark.parametrize("model", ["-P", "-S"])
def test_findscu_series_and_image_level(env, small_corpus, model):
    series_seen = 0
    images_seen = 0
    for study, files in small_corpus.studies().items():
        patient = [f"PatientID={files[0]['PatientID']}"] if model == "-P" else []
        rsps = findscu(env, model, "QueryRetrieveLevel=SERIES", *patient,
                       f"StudyInstanceUID={study}", "SeriesInstanceUID", "Modality",
                       "NumberOfSeriesRelatedInstances")
        want = {}
        for f in files:
            want.setdefault(f["SeriesInstanceUID"], []).append(f)
        got = {r.SeriesInstanceUID: r for r in rsps}
        assert len(rsps) == len(want) and set(got) == set(want), study
        for series, sfiles in want.items():
            assert got[series].Modality == sfiles[0]["Modality"]
            assert int(got[series].NumberOfSeriesRelatedInstances) == len(sfiles)
            images = findscu(env, model, "QueryRetrieveLevel=IMAGE", *patient,
                             f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}",
                             "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
            assert sorted(i.SOPInstanceUID for i in images) == sorted(
                f["SOPInstanceUID"] for f in sfiles), series
            for i in images:
                assert i.SOPClassUID == small_corpus.by_sop()[i.SOPInstanceUID]["SOPClassUID"]
            images_seen += len(images)
        series_seen += len(rsps)
    assert (series_seen, images_seen) == (6, 38)


def _check_retrieved(env, got: dict[str, Path], expected: list[dict], converted_ok) -> set:
    """Byte for byte where the stored syntax arrived; decoded equality where Outpost
    converted (allowed only when `converted_ok(file)` says the receiver could not take the
    stored syntax). Returns the SOP UIDs that arrived converted."""
    assert sorted(got) == sorted(f["SOPInstanceUID"] for f in expected)
    converted = set()
    for f in expected:
        sop = f["SOPInstanceUID"]
        path = got[sop]
        ts = transfer_syntax_of(path)
        if ts == f["TransferSyntaxUID"]:
            assert_same_dataset(dataset_bytes(path), env.sent[sop], f["path"])
            continue
        converted.add(sop)
        assert converted_ok(f), (
            f"{f['path']} arrived as {ts}, but it is stored as {f['TransferSyntaxUID']}, "
            "which the receiver accepts")
        assert ts in (EXPLICIT_LE, IMPLICIT_LE), f"converted to {ts}"
        diffs = decoded_differences(path.read_bytes(), env.corpus.path(f).read_bytes())
        assert not diffs, f"{f['path']} converted {f['TransferSyntaxUID']} -> {ts}: {diffs}"
    return converted


def test_getscu_every_study(env, small_corpus):
    """getscu's default proposes one context per class, [Explicit LE, Explicit BE, Implicit
    LE], and Outpost accepts Explicit LE on it: instances stored in any other syntax have
    to be converted (checked attribute by attribute with pydicom); the rest must arrive
    byte for byte."""
    non_explicit = set()
    for study, files in small_corpus.studies().items():
        out = env.fresh_dir("get")
        mark = env.outpost.log_mark()
        r = dcmtk("getscu", "-v", "-aet", "GETSCU", "-aec", "OUTPOST", "-S", "+B", "-od", out,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                  "127.0.0.1", env.outpost.port)
        assert "E:" not in r.stdout + r.stderr, r.stdout + r.stderr
        assert f"completed={len(files)} failed=0 warning=0" in env.outpost.log_since(mark)
        converted = _check_retrieved(
            env, received(out), files, lambda f: f["TransferSyntaxUID"] != EXPLICIT_LE)
        non_explicit |= converted
    assert non_explicit == {f["SOPInstanceUID"] for f in small_corpus.files
                            if f["TransferSyntaxUID"] != EXPLICIT_LE}
    assert len(non_explicit) == 4


@pytest.mark.parametrize("ts", [RLE_LOSSLESS, DEFLATED_LE, EXPLICIT_BE],
                         ids=["rle", "deflated", "big-endian"])
def test_getscu_preferring_the_stored_syntax_in_one_context(env, small_corpus, ts):
    """getscu +xr (+xd, +xb) lists the stored syntax ahead of the Little Endian ones in the
    one context it proposes per class. Accepting it would strand every instance of the
    class stored in another syntax (nothing here encodes into RLE, deflate or Big Endian),
    so Outpost accepts Explicit LE on a retrieve-only association and converts: the instance
    arrives decoded-equal (IMAGE level, one instance). Separate contexts per syntax keep the
    stored syntax: test_pynetdicom.test_get_every_study_byte_for_byte."""
    (f,) = small_corpus.by_syntax()[ts]
    out = env.fresh_dir("get1")
    dcmtk("getscu", "-aet", "GETSCU", "-aec", "OUTPOST", "-S", "+B", GETSCU_PREFER[ts],
          "-od", out, "-k", "QueryRetrieveLevel=IMAGE",
          "-k", f"StudyInstanceUID={f['StudyInstanceUID']}",
          "-k", f"SeriesInstanceUID={f['SeriesInstanceUID']}",
          "-k", f"SOPInstanceUID={f['SOPInstanceUID']}", "127.0.0.1", env.outpost.port)
    got = received(out)
    assert list(got) == [f["SOPInstanceUID"]]
    assert transfer_syntax_of(got[f["SOPInstanceUID"]]) == EXPLICIT_LE
    assert _check_retrieved(env, got, [f], lambda _: True) == {f["SOPInstanceUID"]}


@pytest.mark.parametrize("prefer", ["+xr", "+xb"], ids=["prefer-rle", "prefer-big-endian"])
def test_getscu_preferring_another_syntax_gets_whole_study(env, small_corpus, prefer):
    """getscu proposes one context per storage class, listing the preferred syntax first
    and the uncompressed ones after it ([RLE, Explicit LE, Explicit BE, Implicit LE] with
    +xr). Every instance of study 1 (Explicit LE, Implicit, RLE, deflated) must arrive, as
    stored when the accepted syntax is the stored one, converted otherwise. Before the
    negotiation preferred Little Endian on retrieve-only associations, Outpost accepted RLE
    here and 23 of the 24 sub-operations failed: nothing could be encoded into RLE."""
    study = small_corpus.with_role("rle")[0]["StudyInstanceUID"]
    files = small_corpus.studies()[study]
    out = env.fresh_dir("getpref")
    mark = env.outpost.log_mark()
    dcmtk("getscu", "-v", "-aet", "GETSCU", "-aec", "OUTPOST", "-S", "+B", prefer,
          "-od", out, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
          "127.0.0.1", env.outpost.port, check=False)
    server = env.outpost.log_since(mark)
    done = re.search(r"C-GET-RSP finished .*completed=(\d+) failed=(\d+)", server)
    assert done, server
    assert (int(done[1]), int(done[2])) == (len(files), 0), (
        f"{done[1]} of {len(files)} instances sent, {done[2]} failed:\n"
        + "\n".join(l for l in server.splitlines() if "sub-operation failed" in l)[:1500])
    _check_retrieved(env, received(out), files, lambda f: True)


@pytest.fixture(scope="module")
def moved(env, small_corpus):
    """movescu of every study to a bit-preserving storescp accepting every syntax."""
    out = env.fresh_dir("move")
    scp = DcmtkServer("storescp", ["-aet", "STORESCP", "+B", "+xa", "-od", out,
                                   env.storescp_port], env.storescp_port, env.work / "scp.log")
    logs = {}
    try:
        for study in small_corpus.studies():
            mark = env.outpost.log_mark()
            r = dcmtk("movescu", "-v", "-aet", "MOVESCU", "-aec", "OUTPOST", "-aem", "STORESCP",
                      "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                      "127.0.0.1", env.outpost.port)
            logs[study] = (r.stdout + r.stderr, env.outpost.log_since(mark))
    finally:
        scp.stop()
    return received(out), logs


def test_movescu_every_study(env, small_corpus, moved):
    got, logs = moved
    for study, files in small_corpus.studies().items():
        tool, server = logs[study]
        assert re.search(rf'C-MOVE-RSP finished .*calling=MOVESCU destination="STORESCP" '
                         rf"completed={len(files)} failed=0 warning=0", server), server
        assert "Received Final Move Response (Success)" in tool, tool[-2000:]
    assert len(got) == 38
    # Every instance arrives; conversions are checked attribute by attribute.
    _check_retrieved(env, got, small_corpus.files, lambda f: True)


def test_movescu_delivers_stored_syntax(env, small_corpus, moved):
    """storescp +xa accepts every syntax of the corpus (the tap above took each of them),
    so no instance needs converting: each must arrive in its stored syntax, byte for byte.
    """
    got, _ = moved
    # The tap (storescp +xa, as here) took every file in its stored syntax.
    assert all(env.sent_syntax[f["SOPInstanceUID"]] == f["TransferSyntaxUID"]
               for f in small_corpus.files)
    wrong = {small_corpus.by_sop()[sop]["path"]: (small_corpus.by_sop()[sop]["TransferSyntaxUID"],
                                                  transfer_syntax_of(p))
             for sop, p in got.items()
             if transfer_syntax_of(p) != small_corpus.by_sop()[sop]["TransferSyntaxUID"]}
    assert not wrong, f"converted although the destination accepts the stored syntax: {wrong}"
    _check_retrieved(env, got, small_corpus.files, lambda f: False)


def test_unlisted_caller_is_rejected(env):
    r = dcmtk("echoscu", "-v", "-aet", "INTRUDER", "-aec", "OUTPOST", "127.0.0.1",
              env.outpost.port, check=False)
    assert r.returncode != 0
    assert "Association Rejected" in r.stdout + r.stderr, r.stdout + r.stderr
    line = env.outpost.wait_log(r"association rejected: .*INTRUDER")
    assert "is not in [[dicom.remote]] and unknown callers are not accepted" in line
    audit = env.outpost.audit_path.read_text()
    assert "INTRUDER" in audit
    # A listed caller is still served.
    dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "OUTPOST", "127.0.0.1", env.outpost.port)
    assert env.outpost.alive()
