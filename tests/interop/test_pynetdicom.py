"""Outpost against pynetdicom/pydicom: storage in each file's own transfer syntax, C-FIND
with character sets, C-GET and C-MOVE byte for byte, C-CANCEL, the C-FIND result limit and
duplicates.

Storage sends each file's data set exactly as it is in the file (no re-encoding), so the
data sets that come back are compared with the original files themselves.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

import dicomnet as net
import synth
from harness import (
    ALL_CORPUS_SYNTAXES, EXPLICIT_LE, IMPLICIT_LE, assert_same_dataset, dataset_bytes,
    decoded_differences, free_port,
)


@pytest.fixture(scope="module")
def archive(module_outposts, small_corpus):
    """One Outpost with the small corpus stored by pynetdicom, and a C-MOVE destination."""
    dest_port = free_port()
    outpost = module_outposts("pynetdicom", remotes=[
        {"ae_title": "PYSTORESCP", "host": "127.0.0.1", "port": dest_port}])
    statuses = net.store_files(outpost.port, small_corpus.paths())
    outpost.dest_port = dest_port
    outpost.store_statuses = statuses
    return outpost


PATIENT_NAME, SPECIFIC_CHARACTER_SET, STUDY_DESCRIPTION = 0x00100010, 0x00080005, 0x00081030


def file_raw(path, tag: int) -> bytes:
    """An element's value bytes as the file holds them (Explicit VR LE files only)."""
    return net.walk_explicit_le(dataset_bytes(path))[tag]


def only_match(r: net.FindResult) -> dict[int, bytes]:
    assert r.status == net.SUCCESS, f"{r.status:#06x}"
    assert len(r.matches) == 1 and len(r.raw) == 1, f"{len(r.matches)} matches"
    return net.walk_explicit_le(r.raw[0])


# ---------------------------------------------------------------------------------------


def test_store_corpus_each_in_its_own_syntax(archive, small_corpus):
    statuses = archive.store_statuses
    assert len(statuses) == 38
    bad = {str(p): s for p, s in statuses.items() if s != net.SUCCESS}
    assert not bad, f"not stored: {bad}"
    line = archive.wait_log(r"association PYSTORESCU@.* ended \(released\)")
    assert "38 stored, 0 duplicates, 0 refused" in line
    assert net.count_images(archive.port, small_corpus.studies()) == 38
    assert len(archive.object_files()) == 38


def test_find_latin1_name_returned_as_stored(archive, small_corpus):
    f = small_corpus.with_role("latin1")[0]
    r = net.find_raw(archive.port, "P", net.query(
        "PATIENT", PatientID=f["PatientID"], IssuerOfPatientID=f["IssuerOfPatientID"],
        PatientName=""))
    m = only_match(r)
    assert m[SPECIFIC_CHARACTER_SET] == b"ISO_IR 100"
    want = file_raw(small_corpus.path(f), PATIENT_NAME)
    assert want == "MÜLLER^JÜRGEN".encode("latin-1") + b" "  # the corpus as documented
    assert m[PATIENT_NAME] == want
    assert str(r.matches[0].PatientName) == "MÜLLER^JÜRGEN"


@pytest.mark.parametrize("model,level", [("P", "PATIENT"), ("S", "STUDY")])
def test_find_utf8_query_matches_latin1_patient(archive, small_corpus, model, level):
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 192"
    q.QueryRetrieveLevel = level
    q.PatientName = "MÜLLER*"
    q.PatientID = ""
    q.IssuerOfPatientID = ""
    if level == "STUDY":
        q.StudyInstanceUID = ""
    r = net.find_raw(archive.port, model, q)
    assert r.status == net.SUCCESS
    latin1 = small_corpus.with_role("latin1")
    if level == "PATIENT":
        assert [(m.PatientID, m.IssuerOfPatientID) for m in r.matches] == [
            ("OUTPOST-0001", "HOSP_A")]
    else:
        want = {(f["PatientID"], f["IssuerOfPatientID"], f["StudyInstanceUID"]) for f in latin1}
        assert len(want) == 2
        assert sorted((m.PatientID, m.IssuerOfPatientID, m.StudyInstanceUID)
                      for m in r.matches) == sorted(want)
    assert len(r.raw) == len(r.matches)
    for raw in r.raw:
        m = net.walk_explicit_le(raw)
        assert m[SPECIFIC_CHARACTER_SET] == b"ISO_IR 100"
        assert m[PATIENT_NAME] == "MÜLLER^JÜRGEN".encode("latin-1") + b" "


@pytest.mark.parametrize("level", ["PATIENT", "STUDY"])
def test_find_iso2022_japanese_bytes_intact(archive, small_corpus, level):
    f = small_corpus.one("iso2022-jp")
    keys = {"PatientID": f["PatientID"], "PatientName": ""}
    if level == "STUDY":
        keys.update(StudyInstanceUID="", StudyDescription="")
    r = net.find_raw(archive.port, "S" if level == "STUDY" else "P", net.query(level, **keys))
    m = only_match(r)
    path = small_corpus.path(f)
    assert m[SPECIFIC_CHARACTER_SET] == file_raw(path, SPECIFIC_CHARACTER_SET)
    assert m[SPECIFIC_CHARACTER_SET] == b"\\ISO 2022 IR 87 "
    name = file_raw(path, PATIENT_NAME)
    assert b"\x1b$B" in name  # ISO 2022 escape to JIS X 0208, as the corpus documents
    assert m[PATIENT_NAME] == name
    assert str(r.matches[0].PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    if level == "STUDY":
        assert m[STUDY_DESCRIPTION] == file_raw(path, STUDY_DESCRIPTION)
        assert b"\x1b$B" in m[STUDY_DESCRIPTION]


def test_get_every_study_byte_for_byte(archive, small_corpus):
    """C-GET with SCP role selection and one presentation context per (class, syntax): each
    instance comes back in its stored syntax, its data set identical to the file's."""
    contexts = small_corpus.storage_contexts(ALL_CORPUS_SYNTAXES)
    total = 0
    for study, files in small_corpus.studies().items():
        result, rec = net.get(archive.port, "S",
                              net.query("STUDY", StudyInstanceUID=study), contexts)
        assert result.status == net.SUCCESS, result.final
        assert (result.completed, result.failed, result.warning) == (len(files), 0, 0)
        got = rec.by_uid()
        assert sorted(got) == sorted(f["SOPInstanceUID"] for f in files)
        for f in files:
            r = got[f["SOPInstanceUID"]]
            assert r.transfer_syntax == f["TransferSyntaxUID"], f["path"]
            assert r.sop_class_uid == f["SOPClassUID"]
            assert_same_dataset(r.dataset, dataset_bytes(small_corpus.path(f)), f["path"])
        total += len(got)
    assert total == 38


def test_get_converts_for_receiver_without_stored_syntax(archive, small_corpus):
    """A receiver accepting only Implicit VR Little Endian gets every instance of study 1
    (Explicit LE, RLE, deflated and Implicit instances) in Implicit VR: converted ones are
    compared attribute by attribute (pixel data decoded), the Implicit one byte for byte."""
    study = small_corpus.with_role("rle")[0]["StudyInstanceUID"]
    files = small_corpus.studies()[study]
    result, rec = net.get(archive.port, "S", net.query("STUDY", StudyInstanceUID=study),
                          small_corpus.storage_contexts([IMPLICIT_LE]))
    assert result.status == net.SUCCESS, result.final
    assert (result.completed, result.failed) == (len(files), 0)
    got = rec.by_uid()
    assert len(got) == len(files) == 24
    for f in files:
        r = got[f["SOPInstanceUID"]]
        assert r.transfer_syntax == IMPLICIT_LE
        original = small_corpus.path(f).read_bytes()
        if f["TransferSyntaxUID"] == IMPLICIT_LE:
            assert_same_dataset(r.dataset, dataset_bytes(original), f["path"])
        else:
            diffs = decoded_differences(r.part10(), original)
            assert not diffs, f"{f['path']} ({f['TransferSyntaxUID']} -> implicit): {diffs}"


@pytest.fixture
def destination(archive):
    scp = net.StorageSCP("PYSTORESCP", archive.dest_port)
    yield scp
    scp.stop()


def test_move_every_study_to_pynetdicom_scp(archive, small_corpus, destination):
    for study, files in small_corpus.studies().items():
        r = net.move(archive.port, "S", net.query("STUDY", StudyInstanceUID=study),
                     "PYSTORESCP")
        assert r.status == net.SUCCESS, r.final
        assert (r.completed, r.failed, r.warning) == (len(files), 0, 0)
    got = destination.recorder.by_uid()
    assert len(got) == 38
    converted = []
    for f in small_corpus.files:
        r = got[f["SOPInstanceUID"]]
        assert r.move_originator == "PYMOVESCU"
        original = small_corpus.path(f).read_bytes()
        if r.transfer_syntax == f["TransferSyntaxUID"]:
            assert_same_dataset(r.dataset, dataset_bytes(original), f["path"])
        else:
            # Outpost converted (see test_dcmtk.py::test_movescu_delivers_stored_syntax for
            # whether it had to): the decoded attributes must still be the same.
            converted.append(f["path"])
            assert r.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE)
            diffs = decoded_differences(r.part10(), original)
            assert not diffs, f"{f['path']} -> {r.transfer_syntax}: {diffs}"
    # Compressed instances always arrive as stored (the destination accepts them).
    natives = {f["path"] for f in small_corpus.files
               if f["TransferSyntaxUID"] in (IMPLICIT_LE, "1.2.840.10008.1.2.2")}
    assert set(converted) <= natives, converted


def test_move_to_unknown_destination_is_refused(archive, small_corpus):
    study = next(iter(small_corpus.studies()))
    r = net.move(archive.port, "S", net.query("STUDY", StudyInstanceUID=study), "NOWHERE")
    assert r.status == 0xA801
    assert "NOWHERE" in str(r.final.get("ErrorComment", ""))


def test_duplicate_store_succeeds_without_new_instance(archive, small_corpus):
    before = net.count_images(archive.port, small_corpus.studies())
    files_before = len(archive.object_files())
    f = small_corpus.with_role("rle")[0]
    mark = archive.log_mark()
    statuses = net.store_files(archive.port, [small_corpus.path(f)], ae_title="PYDUPSCU")
    assert list(statuses.values()) == [net.SUCCESS]
    assert net.count_images(archive.port, small_corpus.studies()) == before == 38
    assert len(archive.object_files()) == files_before == 38
    assert "0 stored, 1 duplicates, 0 refused" in archive.log_since(mark)
    # The stored instance is still the first one, intact.
    result, rec = net.get(archive.port, "S", net.query(
        "IMAGE", StudyInstanceUID=f["StudyInstanceUID"],
        SeriesInstanceUID=f["SeriesInstanceUID"], SOPInstanceUID=f["SOPInstanceUID"]),
        small_corpus.storage_contexts(ALL_CORPUS_SYNTAXES))
    assert result.completed == 1
    assert_same_dataset(rec.received[0].dataset, dataset_bytes(small_corpus.path(f)), f["path"])


# -- C-CANCEL and the result limit ------------------------------------------------------

MANY = 1000


@pytest.fixture(scope="module")
def many_studies(module_outposts, tmp_path_factory):
    """An Outpost holding MANY one-instance studies, imported with `outpost import`."""
    src = tmp_path_factory.mktemp("many")
    for i, data in enumerate(synth.variants(MANY, rows=2, cols=2)):
        synth.write(src / f"{i}.dcm", data)
    outpost = module_outposts("many", start=False, storage={"durability": "relaxed"})
    r = outpost.cli("import", src)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{MANY} stored, 0 duplicate, 0 rejected" in r.stdout
    return outpost.start()


def test_cancel_find_midway(many_studies):
    q = net.query("STUDY", StudyInstanceUID="", PatientID="", StudyDate="")
    with net.association(many_studies.port, [(net.FIND["S"], [EXPLICIT_LE])],
                         ae_title="PYCANCEL") as a:
        # Cancel on the first pending response.
        pendings, final = 0, None
        net.park(a)
        for status, ident in a.send_c_find(q, net.FIND["S"], msg_id=7):
            assert "Status" in status, "association lost"
            if status.Status in (net.PENDING, net.PENDING_WARNING):
                pendings += 1
                if pendings == 1:
                    a.send_c_cancel(7, query_model=net.FIND["S"])
            else:
                final = int(status.Status)
        # pynetdicom reads responses on its own thread whatever the iterator does, so
        # nothing holds Outpost back: it may have sent all the matches before the cancel
        # arrives; the operation is then over, and Outpost ignores a C-CANCEL for an
        # operation it has finished. Either way the answer is consistent and the association
        # goes on.
        print(f"C-CANCEL after the first match: {pendings} of {MANY} matches answered, "
              f"final status {final:#06x}")
        if final == net.CANCEL:
            assert 1 <= pendings < MANY
        else:
            assert (final, pendings) == (net.SUCCESS, MANY), f"final {final:#06x} after {pendings}"
        # Cancelled right after the request: Outpost sees it before it answers anything.
        net.park(a)
        responses = a.send_c_find(q, net.FIND["S"], msg_id=8)
        a.send_c_cancel(8, query_model=net.FIND["S"])
        statuses = [int(s.Status) for s, _ in responses]
        assert statuses[-1] == net.CANCEL
        print(f"C-CANCEL right after the request: {len(statuses) - 1} matches answered")
        assert len(statuses) - 1 < MANY
        # The association still works: a full query answers every study.
        full = net.find(a, "S", q, msg_id=9)
        assert full.status == net.SUCCESS and len(full.matches) == MANY
    line = many_studies.wait_log(r"C-FIND answered .*calling=PYCANCEL.*cancelled=true")
    assert f"matches={MANY}" in line


def test_find_over_limit_is_refused(outposts, small_corpus):
    outpost = outposts("limited", dicom={"max_find_results": 5})
    net.store_files(outpost.port, small_corpus.paths())
    f = small_corpus.with_role("rle")[0]
    over = net.query("IMAGE", StudyInstanceUID=f["StudyInstanceUID"],
                     SeriesInstanceUID=f["SeriesInstanceUID"], SOPInstanceUID="")
    r = net.find_once(outpost.port, "S", over)
    assert r.status == 0xA700
    assert r.matches == [], "a refused query must not send part of the matches"
    comment = str(r.final.get("ErrorComment", ""))
    assert comment, "0xA700 without an ErrorComment"
    assert "5" in comment, comment
    # At the limit or below, answered in full.
    ok = net.find_once(outpost.port, "S", net.query("STUDY", StudyInstanceUID=""))
    assert ok.status == net.SUCCESS and len(ok.matches) == 4
    assert outpost.alive()


def test_find_returns_stored_sequences_in_either_syntax(outposts, tmp_path):
    """A viewer lists studies with their ProcedureCodeSequence to show the procedure.

    Regression (archive-review §16): sequence keys always came back empty (and later not at
    all), although the instances held them. Now they come back from a stored instance, in the
    syntax of the C-FIND's presentation context, whichever the file was stored in."""
    from pydicom import dcmread
    from pydicom.uid import ImplicitVRLittleEndian

    outpost = outposts("sequences")
    paths = []
    for n, (code, implicit) in enumerate([("CT-CHEST", False), ("CT-HEAD", True)], start=1):
        data = synth.ct_instance(patient_id=f"SQ{n}", study_uid=synth.uid(9, n),
                                 series_uid=synth.uid(9, n, 1), sop_uid=synth.uid(9, n, 1, 1))
        p = synth.write(tmp_path / f"sq{n}.dcm", data)
        ds = dcmread(p)
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "LOCAL"
        item.CodeMeaning = code.replace("-", " ")
        ds.ProcedureCodeSequence = [item]
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(p, enforce_file_format=True)
        paths.append((p, code))
    assert all(s == 0 for s in net.store_files(outpost.port, [p for p, _ in paths]).values())

    for syntax in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]:
        with net.association(outpost.port, [(net.FIND["S"], [syntax])]) as a:
            for n, (_, code) in enumerate(paths, start=1):
                q = net.query("STUDY", StudyInstanceUID=synth.uid(9, n))
                q.ProcedureCodeSequence = []
                r = net.find(a, "S", q)
                assert r.status == net.SUCCESS and len(r.matches) == 1, (syntax, r)
                seq = r.matches[0].ProcedureCodeSequence
                assert len(seq) == 1, (syntax, r.matches[0])
                assert seq[0].CodeValue == code and seq[0].CodingSchemeDesignator == "LOCAL", seq
                assert seq[0].CodeMeaning == code.replace("-", " ")
    assert outpost.alive()
