"""Store-and-forward against real destinations: Debian's Orthanc 1.10 over DICOM (C-STORE)
and DICOMweb (its STOW-RS plugin), a pynetdicom Storage SCP that takes CT only, and a small
STOW-RS server that refuses chosen instances.

Every test starts its own `outpost serve` with [[forward.destination]] tables and watches the
queue through `outpost queue --json` (the control socket of the running service), and what
arrived through the destination itself (Orthanc's REST API, the SCP's recorder, the HTTP
server's request log).

What is compared: the set of SOP Instance UIDs that arrived (exactly those sent), and each
arrived data set with the one Outpost stored, byte for byte (a deflated one once inflated:
Orthanc deflates it again with its own zlib settings), and, decoded, with the corpus file
(DCMTK's storescu re-encodes sequences on the way in, so the archive's bytes are the
reference, not the file's).
"""

from __future__ import annotations

import json
import re
import time

import pytest

import dicomnet as net
import synth
from forwarding import (
    CT_IMAGE, PickyScp, StowServer, arrival_report, compare_arrivals, dead_letters,
    dicom_destination, outpost_objects, queue_cli, queue_row, row_text,
    storescu_corpus, wait_for, web_destination,
)
from harness import (
    DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE, RLE_LOSSLESS, dataset_bytes, dcmtk,
    decoded_differences, elapsed, free_port, port_accepts, run_outpost, transfer_syntax_of,
)

pytestmark = pytest.mark.timeout(90)


def corpus_originals(corpus) -> dict[str, bytes]:
    return {f["SOPInstanceUID"]: corpus.path(f).read_bytes() for f in corpus.files}


def assert_arrived_intact(received: dict[str, bytes], outpost, corpus) -> str:
    """Every received instance equals what Outpost stored (data set bytes; a deflated one
    once inflated) and, decoded, the corpus file; returns the per-syntax report."""
    arrivals = compare_arrivals(received, outpost_objects(outpost), corpus_originals(corpus))
    report = arrival_report(arrivals)
    print(report)
    problems = []
    for a in arrivals:
        if a.received_syntax != a.stored_syntax:
            problems.append(f"{a.sop}: stored in {a.stored_syntax}, arrived in "
                            f"{a.received_syntax}")
        if not a.same_inflated:
            problems.append(f"{a.sop} ({a.stored_syntax}): data set differs from the stored one")
        if a.decoded:
            problems.append(f"{a.sop}: decoded attributes differ from the corpus file: "
                            f"{a.decoded[:5]}")
        if not a.same_bytes and a.stored_syntax != DEFLATED_LE:
            problems.append(f"{a.sop} ({a.stored_syntax}): not byte for byte")
    assert not problems, "\n".join(problems) + "\n" + report
    return report


def wait_queue(outpost, destination: str, what: str, check, timeout: float = 30) -> dict:
    """Polls `outpost queue --json` until `check(row)` holds; returns the row."""
    last = {}

    def probe():
        last["row"] = queue_row(outpost, destination)
        return check(last["row"]) and last["row"]

    return wait_for(probe, timeout, what, interval=0.2,
                    detail=lambda: row_text(last.get("row", {})) + "\n" + outpost.log_tail(20))


# ---------------------------------------------------------------------------------------
# 1. An outage: everything waits in the queue, and goes when the destination is back.


@pytest.mark.timeout(60)
def test_outage_then_recovery_delivers_the_corpus_unchanged(outposts, orthancs, small_corpus):
    orthanc = orthancs("central", start=False)
    assert not port_accepts(orthanc.dicom_port)
    outpost = outposts(destinations=[dicom_destination("central", orthanc.dicom_port)])

    storescu_corpus(outpost.port, small_corpus)
    n = len(small_corpus.files)
    row = wait_queue(outpost, "central", "destination marked down with the corpus queued",
                     lambda r: r["live"]["state"] == "down" and r["queue"]["depth"] == n)
    q, live = row["queue"], row["live"]
    assert q["dead"] == 0 and not q["paused"], row_text(row)
    assert q["oldest_enqueued_at"] is not None, row_text(row)
    assert live["kind"] == "dicom" and live["delivered"] == 0, row_text(row)
    assert "refused" in (live["last_error"] or "").lower(), row_text(row)
    # The table names the state too.
    table = queue_cli(outpost)
    assert table.returncode == 0, table.stderr
    assert re.search(rf"^central\s+dicom\s+down\s+{n}\s+0\s", table.stdout, re.M), table.stdout

    # A clean restart while the destination is down keeps the queue.
    t = time.monotonic()
    assert outpost.terminate(timeout=20) == 0
    print(f"SIGTERM with {n} queued and the destination down: stopped in {elapsed(t)}")
    outpost.start()
    row = queue_row(outpost, "central")
    assert row["queue"]["depth"] == n, row_text(row)

    t = time.monotonic()
    orthanc.start()
    wait_for(lambda: orthanc.count() >= n, 30, f"{n} instances at Orthanc",
             detail=lambda: outpost.log_tail(20))
    print(f"all {n} instances at Orthanc {elapsed(t)} after it started")
    row = wait_queue(outpost, "central", "queue drained",
                     lambda r: r["queue"]["depth"] == 0 and r["live"]["delivered"] >= n)
    assert row["live"]["state"] == "up" and row["queue"]["dead"] == 0, row_text(row)
    assert row["live"]["dead_lettered"] == 0, row_text(row)

    held = orthanc.instances()
    assert set(held) == {f["SOPInstanceUID"] for f in small_corpus.files}
    received = {sop: orthanc.file(oid) for sop, oid in held.items()}
    assert_arrived_intact(received, outpost, small_corpus)
    # Orthanc records who sent it: Outpost's own AE title.
    assert {orthanc.remote_aet(oid) for oid in held.values()} == {"OUTPOST"}


@pytest.mark.timeout(60)
def test_a_destination_refusing_rle_and_deflate_gets_them_converted(outposts, orthancs,
                                                                    small_corpus):
    """Orthanc told to refuse RLE Lossless and Deflated Explicit VR Little Endian: those
    instances go in a Little Endian syntax it accepts, decoded-identical to the corpus."""
    orthanc = orthancs("central", extra={"RleTransferSyntaxAccepted": False,
                                         "DeflatedTransferSyntaxAccepted": False})
    outpost = outposts(destinations=[dicom_destination("central", orthanc.dicom_port)])
    files = [f for f in small_corpus.files if f["TransferSyntaxUID"] in (RLE_LOSSLESS,
                                                                        DEFLATED_LE)]
    assert len(files) == 2
    storescu_corpus(outpost.port, small_corpus, files)
    row = wait_queue(outpost, "central", "both delivered",
                     lambda r: r["queue"]["depth"] == 0 and r["live"]["delivered"] == 2)
    assert row["queue"]["dead"] == 0, row_text(row)
    held = orthanc.instances()
    assert set(held) == {f["SOPInstanceUID"] for f in files}
    originals = corpus_originals(small_corpus)
    for f in files:
        got = orthanc.file(held[f["SOPInstanceUID"]])
        ts = transfer_syntax_of(got)
        print(f"{f['TransferSyntaxUID']} refused by Orthanc: arrived as {ts}")
        assert ts in (EXPLICIT_LE, IMPLICIT_LE), (f["path"], ts)
        assert decoded_differences(got, originals[f["SOPInstanceUID"]]) == [], f["path"]


# ---------------------------------------------------------------------------------------
# 2. kill -9 in the middle of forwarding: nothing queued is lost.


# Enough that forwarding takes a second or two, so that the kill often comes after some
# acknowledgements were checkpointed (the index writer checkpoints at least every second;
# the test holds either way: it prints how many were kept).
KILL_COUNT = 600


@pytest.mark.timeout(90)
def test_kill_during_forwarding_loses_nothing(outposts, orthancs, tmp_path):
    orthanc = orthancs("central", start=False)
    # Small batches: more associations and queue commits, and a kill lands inside one.
    outpost = outposts(destinations=[dicom_destination("central", orthanc.dicom_port,
                                                       batch=10)])
    src = tmp_path / "src"
    datas = synth.variants(KILL_COUNT, start=300000, rows=8, cols=8)
    paths = [synth.write(src / f"{i:04d}.dcm", d) for i, d in enumerate(datas)]
    sent = {synth.uid(3, 300000 + i): dataset_bytes(d) for i, d in enumerate(datas)}
    r = dcmtk("storescu", "-aet", "STORESCU", "-aec", "OUTPOST", "-xe", "127.0.0.1",
              outpost.port, *paths, timeout=120)
    assert "Store Failed" not in r.stdout + r.stderr
    row = wait_queue(outpost, "central", "everything queued while Orthanc is down",
                     lambda r: r["queue"]["depth"] == KILL_COUNT)

    orthanc.start()
    t = time.monotonic()
    wait_for(lambda: orthanc.count() >= KILL_COUNT * 3 // 4, 30, "forwarding under way",
             interval=0.02)
    outpost.kill()
    time.sleep(0.5)  # let Orthanc finish with the aborted association
    at_kill = orthanc.count()
    print(f"killed {elapsed(t)} after Orthanc started, with {at_kill} of {KILL_COUNT} there")
    assert at_kill < KILL_COUNT, (
        "every instance had arrived before the kill: forwarding was not interrupted")

    # Restarted with the destination down again: the queue holds at least everything that
    # had not arrived (acknowledgements since the last checkpoint may be lost: at-least-once).
    orthanc.stop()
    outpost.start()
    row = wait_queue(outpost, "central", "down after the restart",
                     lambda r: r["live"]["state"] == "down")
    depth = row["queue"]["depth"]
    print(f"after the restart: depth {depth} ({KILL_COUNT - depth} acknowledgements kept)")
    assert KILL_COUNT - at_kill <= depth <= KILL_COUNT, row_text(row)

    orthanc.start()
    wait_for(lambda: orthanc.count() >= KILL_COUNT, 60, "every instance at Orthanc",
             detail=lambda: row_text(queue_row(outpost, "central")) + outpost.log_tail(20))
    row = wait_queue(outpost, "central", "queue drained after the restart",
                     lambda r: r["queue"]["depth"] == 0 and r["live"]["delivered"] >= depth)
    assert row["queue"]["dead"] == 0 and row["live"]["dead_lettered"] == 0, row_text(row)

    held = orthanc.instances()
    assert set(held) == set(sent), (
        f"missing at Orthanc: {sorted(set(sent) - set(held))[:5]}; "
        f"unexpected: {sorted(set(held) - set(sent))[:5]}")
    for sop, oid in held.items():
        assert dataset_bytes(orthanc.file(oid)) == sent[sop], sop


# ---------------------------------------------------------------------------------------
# 3. A destination that refuses a SOP class: dead letters with the reason, and resubmit.


@pytest.mark.timeout(60)
def test_a_refused_sop_class_is_dead_lettered_and_resubmit_repeats_it(
        outposts, small_corpus, request):
    picky = PickyScp("PICKY")
    request.addfinalizer(picky.stop)
    outpost = outposts(destinations=[dicom_destination("picky", picky.port,
                                                       ae_title="PICKY")])
    storescu_corpus(outpost.port, small_corpus)
    ct = {f["SOPInstanceUID"] for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE}
    other = {f["SOPInstanceUID"]: f["SOPClassUID"] for f in small_corpus.files
             if f["SOPClassUID"] != CT_IMAGE}
    assert ct and len(other) >= 3 and len(set(other.values())) >= 3

    # The live counters follow the queue's durable change (a loaded run once read them one
    # apart), so the wait covers them too; a count past the expected one still fails it.
    row = wait_queue(outpost, "picky", "CT delivered, the rest dead-lettered",
                     lambda r: r["queue"]["depth"] == 0 and r["queue"]["dead"] == len(other)
                     and r["live"]["delivered"] >= len(ct)
                     and r["live"]["dead_lettered"] >= len(other))
    assert row["live"]["delivered"] == len(ct), row_text(row)
    assert row["live"]["dead_lettered"] == len(other), row_text(row)
    assert row["live"]["state"] == "degraded", row_text(row)
    assert picky.received_uids() == ct

    def check_letters() -> dict[str, int]:
        letters = dead_letters(outpost, "picky")
        by_sop = {}
        for seq, letter in letters:
            sop = letter["entry"]["sop_instance_uid"]
            assert sop in other, f"dead letter for {sop}, which is not refused: {letter}"
            assert other[sop] in letter["reason"], (
                f"the reason does not name the SOP class {other[sop]}: {letter['reason']}")
            assert "presentation context" in letter["reason"], letter["reason"]
            by_sop[sop] = seq
        assert set(by_sop) == set(other), f"dead letters: {letters}"
        return by_sop

    first = check_letters()
    text = queue_cli(outpost, "dead", "picky")
    assert text.returncode == 0, text.stderr
    for sop, cls in other.items():
        assert re.search(rf"^\s*\d+\s+{re.escape(sop)}\s.*{re.escape(cls)}", text.stdout,
                         re.M), text.stdout

    # Resubmit one by its number: it is queued again, and dies again for the same reason.
    sop, seq = next(iter(first.items()))
    r = queue_cli(outpost, "resubmit", "picky", "--seq", seq)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queued again" in r.stdout, r.stdout
    wait_queue(outpost, "picky", "the resubmitted one dead-lettered again",
               lambda r: r["live"]["dead_lettered"] == len(other) + 1
               and r["queue"]["dead"] == len(other) and r["queue"]["depth"] == 0)
    second = check_letters()
    assert second[sop] != seq, "the resubmitted letter should come back under a new number"

    # Resubmit all of them.
    r = queue_cli(outpost, "resubmit", "picky")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_queue(outpost, "picky", "every resubmitted one dead-lettered again",
               lambda r: r["live"]["dead_lettered"] == 2 * len(other) + 1
               and r["queue"]["dead"] == len(other) and r["queue"]["depth"] == 0)
    check_letters()
    # Nothing went twice to the SCP.
    assert len(picky.recorder.received) == len(ct)


@pytest.mark.timeout(60)
def test_resubmit_of_a_number_that_is_no_dead_letter_says_so(outposts, small_corpus, request):
    """`resubmit --seq N` where N is no (longer a) dead letter queues nothing, and says so.

    Regression: the first version answered "1 dead letter(s) queued again" and exited 0 for
    a number that was never a dead letter (the store skipped unknown numbers silently and
    the answer counted the numbers asked for), so a technician would wait for an instance
    that was never going to travel."""
    picky = PickyScp("PICKY")
    request.addfinalizer(picky.stop)
    outpost = outposts(destinations=[dicom_destination("picky", picky.port,
                                                       ae_title="PICKY")])
    mr = next(f for f in small_corpus.files if f["SOPClassUID"] != CT_IMAGE
              and f["TransferSyntaxUID"] == EXPLICIT_LE)
    storescu_corpus(outpost.port, small_corpus, [mr])
    wait_queue(outpost, "picky", "dead-lettered", lambda r: r["queue"]["dead"] == 1)
    [(seq, _)] = dead_letters(outpost, "picky")

    r = queue_cli(outpost, "resubmit", "picky", "--seq", seq + 1000)
    row = queue_row(outpost, "picky")
    assert row["queue"]["dead"] == 1 and row["queue"]["depth"] == 0, row_text(row)
    assert row["live"]["dead_lettered"] == 1, row_text(row)
    assert r.returncode != 0, r.stdout
    assert f"no dead letter numbered {seq + 1000}" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# 4. STOW-RS: to Orthanc's DICOMweb plugin, and to a server that refuses some instances.


@pytest.mark.timeout(60)
def test_stow_rs_to_orthanc_delivers_the_corpus_unchanged(outposts, orthancs, small_corpus):
    """STOW-RS to Orthanc's DICOMweb plugin, next to a second, DICOM destination (another
    Orthanc): with no rules, every instance goes to both. The DICOMweb one is down at first,
    which does not hold up the other."""
    web = orthancs("cloud", dicomweb=True, start=False)
    pacs = orthancs("central")
    outpost = outposts(destinations=[
        web_destination("cloud", web.dicomweb_url, max_request_instances=10),
        dicom_destination("central", pacs.dicom_port)])
    storescu_corpus(outpost.port, small_corpus)
    n = len(small_corpus.files)
    wait_queue(outpost, "central", "central drained while cloud is down",
               lambda r: r["queue"]["depth"] == 0 and r["live"]["delivered"] == n)
    row = wait_queue(outpost, "cloud", "cloud down with everything queued",
                     lambda r: r["live"]["state"] == "down" and r["queue"]["depth"] == n)
    assert "could not be reached" in (row["live"]["last_error"] or ""), row_text(row)
    web.start()
    for orthanc, name, kind in ((web, "cloud", "dicomweb"), (pacs, "central", "dicom")):
        wait_for(lambda: orthanc.count() >= n, 30, f"{n} instances at {name}",
                 detail=lambda: outpost.log_tail(20))
        row = wait_queue(outpost, name, f"{name} drained",
                         lambda r: r["queue"]["depth"] == 0 and r["live"]["delivered"] == n)
        assert row["live"]["kind"] == kind and row["live"]["state"] == "up", row_text(row)
        assert row["queue"]["dead"] == 0, row_text(row)

        held = orthanc.instances()
        assert set(held) == {f["SOPInstanceUID"] for f in small_corpus.files}
        received = {sop: orthanc.file(oid) for sop, oid in held.items()}
        print(f"{name} ({kind}):")
        assert_arrived_intact(received, outpost, small_corpus)


@pytest.mark.timeout(60)
def test_stow_rs_failed_sop_sequence_dead_letters_or_retries(outposts, small_corpus, request):
    files = [f for f in small_corpus.files
             if f["SOPClassUID"] == CT_IMAGE and f["TransferSyntaxUID"] == EXPLICIT_LE][:5]
    refused, busy = files[0]["SOPInstanceUID"], files[1]["SOPInstanceUID"]
    server = StowServer(failures={refused: 0xC000, busy: 0xA700})
    request.addfinalizer(server.stop)
    outpost = outposts(destinations=[web_destination(
        "cloud", server.url, retry_initial_s=1, retry_multiplier=1.0, retry_max_s=1)])
    storescu_corpus(outpost.port, small_corpus, files)

    # The busy one is tried again and again (every second), never delivered.
    wait_for(lambda: server.seen(busy) >= 3, 20, "the 0xA700 instance sent 3 times",
             detail=lambda: row_text(queue_row(outpost, "cloud")) + outpost.log_tail(20))
    assert not server.errors, server.errors
    row = queue_row(outpost, "cloud")
    q, live = row["queue"], row["live"]
    assert q["depth"] == 1 and q["dead"] == 1, row_text(row)
    assert live["delivered"] == len(files) - 2, row_text(row)
    assert live["dead_lettered"] == 1 and live["retried"] >= 2, row_text(row)
    assert "0xA700" in (q["last_error"] or ""), row_text(row)
    assert live["state"] == "degraded", row_text(row)

    letters = dead_letters(outpost, "cloud")
    assert len(letters) == 1, letters
    letter = letters[0][1]
    assert letter["entry"]["sop_instance_uid"] == refused, letters
    assert "0xC000" in letter["reason"], letter
    assert server.seen(refused) == 1, "a dead-lettered instance was sent again"
    for f in files[2:]:
        assert server.seen(f["SOPInstanceUID"]) == 1, f["SOPInstanceUID"]

    # The attempts grow: the log says so for each retry of the busy instance.
    attempts = [int(m) for m in re.findall(
        rf"destination=cloud sop={re.escape(busy)} attempts=(\d+)", outpost.log_text())]
    assert attempts[:3] == [1, 2, 3], (attempts, outpost.log_tail(20))


@pytest.mark.timeout(60)
def test_queue_retry_makes_a_backed_off_instance_due_now(outposts, small_corpus, request):
    """A 0xA700 instance waits out its backoff (an hour here); `outpost queue retry` sends
    it again at once, and it stays queued with its attempts counted."""
    f = next(f for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE
             and f["TransferSyntaxUID"] == EXPLICIT_LE)
    busy = f["SOPInstanceUID"]
    server = StowServer(failures={busy: 0xA700})
    request.addfinalizer(server.stop)
    outpost = outposts(destinations=[web_destination(
        "slow", server.url, retry_initial_s=3600, retry_max_s=3600)])
    storescu_corpus(outpost.port, small_corpus, [f])
    wait_for(lambda: server.seen(busy) == 1, 10, "the first attempt")
    time.sleep(1.5)
    assert server.seen(busy) == 1, "sent again before its backoff was over"
    for n in (2, 3):
        r = queue_cli(outpost, "retry", "slow")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: server.seen(busy) == n, 10, f"attempt {n} after `retry`",
                 detail=lambda: outpost.log_tail(10))
    row = wait_queue(outpost, "slow", "three attempts counted",
                     lambda r: r["live"]["retried"] == 3)
    assert row["queue"]["depth"] == 1 and row["queue"]["dead"] == 0, row_text(row)
    assert row["live"]["delivered"] == 0, row_text(row)
    attempts = [int(m) for m in re.findall(
        rf"destination=slow sop={re.escape(busy)} attempts=(\d+)", outpost.log_text())]
    assert attempts == [1, 2, 3], (attempts, outpost.log_tail(20))


# ---------------------------------------------------------------------------------------
# 5. No loops: what upstream sends is kept, not forwarded.


@pytest.mark.timeout(60)
def test_upstream_instances_are_stored_but_not_queued(outposts, orthancs, small_corpus,
                                                       tmp_path):
    orthanc = orthancs("central", start=False)  # down: nothing could leave anyway
    outpost = outposts(
        remotes=[{"ae_title": "PRIORS", "host": "127.0.0.1", "port": free_port(),
                  "upstream": True}],
        destinations=[dicom_destination("central", orthanc.dicom_port)])
    storescu_corpus(outpost.port, small_corpus, calling="PRIORS")
    stored = outpost_objects(outpost)
    assert set(stored) == {f["SOPInstanceUID"] for f in small_corpus.files}
    row = queue_row(outpost, "central")
    assert row["queue"]["depth"] == 0 and row["queue"]["dead"] == 0, row_text(row)
    assert row["live"]["delivered"] == 0 and row["live"]["retried"] == 0, row_text(row)

    # The destination's own AE title counts as upstream too (instances fetched back).
    src = tmp_path / "src"
    datas = synth.variants(3, start=400000, rows=4, cols=4)
    paths = [synth.write(src / f"{i}.dcm", d) for i, d in enumerate(datas)]
    dcmtk("storescu", "-aet", "ORTHANC", "-aec", "OUTPOST", "127.0.0.1", outpost.port,
          paths[0])
    # Anyone else's instances are queued: the check above is not vacuous.
    dcmtk("storescu", "-aet", "MODALITY", "-aec", "OUTPOST", "127.0.0.1", outpost.port,
          *paths[1:])
    assert len(outpost_objects(outpost)) == len(stored) + 3
    row = queue_row(outpost, "central")
    assert row["queue"]["depth"] == 2, row_text(row)


# ---------------------------------------------------------------------------------------
# 6. The command line: retry, pause, resume on a live service; a stopped one.


@pytest.mark.timeout(60)
def test_queue_cli_retry_pause_resume_and_a_stopped_service(outposts, orthancs, tmp_path):
    orthanc = orthancs("central", start=False)
    # Probed only once an hour: only `retry` brings it back within the test.
    outpost = outposts(destinations=[dicom_destination("central", orthanc.dicom_port,
                                                       probe_interval_s=3600)])
    datas = synth.variants(4, start=500000, rows=4, cols=4)
    paths = [synth.write(tmp_path / "src" / f"{i}.dcm", d) for i, d in enumerate(datas)]
    uids = [synth.uid(3, 500000 + i) for i in range(4)]

    def store(ps):
        dcmtk("storescu", "-aet", "MODALITY", "-aec", "OUTPOST", "127.0.0.1", outpost.port,
              *ps)

    store(paths[:2])
    wait_queue(outpost, "central", "down with 2 queued",
               lambda r: r["live"]["state"] == "down" and r["queue"]["depth"] == 2)
    orthanc.start()
    time.sleep(2)
    assert orthanc.count() == 0, "delivered before the next probe was due"

    r = queue_cli(outpost, "retry", "central")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "central" in r.stdout, r.stdout
    wait_for(lambda: orthanc.count() == 2, 10, "delivered after `outpost queue retry`",
             detail=lambda: outpost.log_tail(20))
    wait_queue(outpost, "central", "up and drained",
               lambda r: r["live"]["state"] == "up" and r["queue"]["depth"] == 0)

    # Paused: instances are queued, not sent.
    r = queue_cli(outpost, "pause", "central")
    assert r.returncode == 0 and "paused" in r.stdout, r.stdout + r.stderr
    assert queue_row(outpost, "central")["queue"]["paused"] is True
    store(paths[2:])
    row = queue_row(outpost, "central")
    assert row["queue"]["depth"] == 2 and row["queue"]["paused"], row_text(row)
    # Paused survives a restart.
    assert outpost.terminate() == 0
    outpost.start()
    row = queue_row(outpost, "central")
    assert row["queue"]["paused"] is True and row["queue"]["depth"] == 2, row_text(row)
    time.sleep(2)
    assert orthanc.count() == 2, "delivered while paused"
    table = queue_cli(outpost)
    assert table.returncode == 0, table.stderr
    assert re.search(r"^central\s+dicom\s+paused\s+2\s", table.stdout, re.M), table.stdout

    r = queue_cli(outpost, "resume", "central")
    assert r.returncode == 0 and "resumed" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: orthanc.count() == 4, 10, "delivered after `outpost queue resume`",
             detail=lambda: outpost.log_tail(20))
    row = wait_queue(outpost, "central", "drained after resume",
                     lambda r: r["queue"]["depth"] == 0 and not r["queue"]["paused"])
    assert set(orthanc.instances()) == set(uids)

    # A destination that is not configured: refused, naming the known ones.
    r = queue_cli(outpost, "pause", "nowhere")
    assert r.returncode != 0, r.stdout
    assert "nowhere" in r.stderr and "central" in r.stderr, r.stderr

    # A stopped service: a clear message and a non-zero exit, with and without --json.
    assert outpost.terminate() == 0
    for json_out in (False, True):
        r = queue_cli(outpost, json_out=json_out)
        assert r.returncode != 0, r.stdout
        assert "cannot reach the running service" in r.stderr, r.stderr
        assert str(outpost.data_dir / "control.sock") in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# 8. Storage Commitment: Orthanc as the committing archive.


@pytest.mark.timeout(90)
def test_storage_commitment_with_orthanc_confirms_every_instance(outposts, orthancs,
                                                                 small_corpus):
    """With `storage_commitment = true`, instances count as held upstream only once the
    archive's N-EVENT-REPORT says so. Orthanc 1.10 answers the N-ACTION, then opens its own
    association to Outpost's listener to report (it must know Outpost as a modality allowed
    to ask)."""
    orthanc = orthancs("central", start=False)
    outpost = outposts(start=False, destinations=[dicom_destination(
        "central", orthanc.dicom_port, storage_commitment=True, commitment_timeout_s=60)])
    orthanc.extra["DicomModalities"] = {"outpost": {
        "AET": "OUTPOST", "Host": "127.0.0.1", "Port": outpost.port,
        "AllowStorageCommitment": True}}
    orthanc.start()
    outpost.start()
    ct = [f for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE
          and f["TransferSyntaxUID"] == EXPLICIT_LE][:6]
    storescu_corpus(outpost.port, small_corpus, ct)
    row = wait_queue(outpost, "central", "every instance delivered and committed",
                     lambda r: r["live"]["delivered"] >= len(ct) and r["queue"]["depth"] == 0
                     and r["queue"]["awaiting_commitment"] == 0)
    assert row["queue"]["dead"] == 0, row_text(row)
    assert orthanc.count() == len(ct)
    # One report per delivered batch; together they commit every instance and fail none.
    reports = re.findall(r"Storage Commitment report .*committed=(\d+) failed=(\d+)",
                         outpost.log_text())
    assert reports, outpost.log_tail(20)
    assert sum(int(c) for c, _ in reports) == len(ct), reports
    assert all(f == "0" for _, f in reports), reports


@pytest.mark.timeout(90)
def test_a_destination_that_cannot_commit_keeps_its_instances_queued(outposts, small_corpus,
                                                                      request):
    """A destination configured for Storage Commitment that does not offer it must not be
    counted as holding the instances: they stay queued with the reason, and go again."""
    picky = PickyScp("PICKY")
    request.addfinalizer(picky.stop)
    outpost = outposts(destinations=[dicom_destination(
        "picky", picky.port, ae_title="PICKY", storage_commitment=True, retry_initial_s=30)])
    ct = [f for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE
          and f["TransferSyntaxUID"] == EXPLICIT_LE][:2]
    storescu_corpus(outpost.port, small_corpus, ct)
    row = wait_queue(outpost, "picky", "the instances wait with the reason",
                     lambda r: r["queue"]["depth"] == len(ct) and "Storage Commitment"
                     in (r["queue"]["last_error"] or ""))
    assert "no presentation context for Storage Commitment" in row["queue"]["last_error"], \
        row_text(row)
    assert row["queue"]["awaiting_commitment"] == 0 and row["queue"]["dead"] == 0, row_text(row)
    # The SCP did store them: a commitment-less success is not taken for a confirmed copy.
    wait_for(lambda: picky.received_uids() >= {f["SOPInstanceUID"] for f in ct}, 10,
             "the SCP recorded both instances")


@pytest.mark.timeout(240)
def test_a_commitment_never_reported_backs_off_counts_attempts_and_alerts(outposts, small_corpus,
                                                                         request):
    """An archive that accepts the N-ACTION but never reports (a PACS that cannot open an
    association back through NAT): after commitment_timeout_s the instances are queued again
    with the reason, after the destination's retry backoff, and after three expiries the
    destination raises an alert in the log and in `outpost status`.

    Regression (review finding 6): an expired transaction was queued again due at once, so
    every instance went again every commitment_timeout_s for ever, with no alert."""
    from harness import run_outpost

    silent = PickyScp("SILENT", silent_commitment=True)
    request.addfinalizer(silent.stop)
    outpost = outposts(destinations=[dicom_destination(
        "silent", silent.port, ae_title="SILENT", storage_commitment=True,
        commitment_timeout_s=10, retry_initial_s=12, retry_multiplier=1.0)])
    ct = [f for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE
          and f["TransferSyntaxUID"] == EXPLICIT_LE][:2]
    storescu_corpus(outpost.port, small_corpus, ct)
    wait_queue(outpost, "silent", "the instances wait for the report",
               lambda r: r["queue"]["awaiting_commitment"] == len(ct))
    first = silent.commitment_requests   # one per delivered batch
    assert first >= 1
    t0 = time.monotonic()
    # The first transaction to expire puts its instances back in the queue, not due yet.
    wait_queue(outpost, "silent", "the transaction expired and the instances wait the backoff",
               lambda r: r["queue"]["depth"] >= 1, timeout=40)
    t_expired = time.monotonic()
    wait_for(lambda: silent.commitment_requests > first, 60,
             "a second commitment request after the first timed out",
             detail=lambda: outpost.log_tail(20))
    # Not at once: the 12 s backoff separates the expiry from the resend.
    assert time.monotonic() - t_expired >= 9, time.monotonic() - t_expired
    assert time.monotonic() - t0 >= 20
    assert "no Storage Commitment report in time" in outpost.log_text(), outpost.log_tail(20)

    def alert():
        r = run_outpost("status", "--config", outpost.config_path, "--json")
        assert r.returncode == 0, r.stderr
        [row] = json.loads(r.stdout)["destinations"]
        return row["live"].get("commitment_alert")
    wait_for(alert, 150, "an alert after three unreported commitments",
             detail=lambda: outpost.log_tail(20))
    assert "3 attempts" in alert(), alert()
    text = run_outpost("status", "--config", outpost.config_path)
    assert "ALERT: no Storage Commitment report for 3 attempts" in text.stdout, text.stdout
    assert "no Storage Commitment report for 3 attempts" in outpost.log_text()


@pytest.mark.timeout(90)
def test_a_pacs_behind_nat_reports_on_our_association(outposts, small_corpus, request):
    """A PACS that cannot open an association to the appliance sends its report on ours
    (PS3.4 J.3.3), two seconds after the N-ACTION-RSP: with commitment_wait_s the
    association stays open for it, the report is answered with success and settles the
    transaction, and nothing is sent again.

    Regression (review finding 6): the association was released right after the
    N-ACTION-RSP, so the report could never come and every instance was resent each
    commitment_timeout_s."""
    pacs = PickyScp("NATPACS", report_on_association=2.0)
    request.addfinalizer(pacs.stop)
    outpost = outposts(destinations=[dicom_destination(
        "natpacs", pacs.port, ae_title="NATPACS", storage_commitment=True,
        commitment_timeout_s=20, commitment_wait_s=10)])
    ct = [f for f in small_corpus.files if f["SOPClassUID"] == CT_IMAGE
          and f["TransferSyntaxUID"] == EXPLICIT_LE][:2]
    storescu_corpus(outpost.port, small_corpus, ct)
    wait_for(lambda: pacs.reports_sent >= 1, 30, "the PACS sent its report on our association",
             detail=lambda: outpost.log_tail(20))
    assert pacs.report_statuses and all(s == 0 for s in pacs.report_statuses), \
        pacs.report_statuses
    # The live counters follow the queue's durable change, so they are waited for as well:
    # on a loaded machine the two instances can go in two transactions, and status can be
    # read between the second one's settling and its count (a CI run saw delivered 1 of 2).
    wait_queue(outpost, "natpacs", "every instance committed",
               lambda r: r["queue"]["depth"] == 0
               and r["queue"]["awaiting_commitment"] == 0 and r["queue"]["dead"] == 0
               and r["live"]["delivered"] == len(ct))
    requests = pacs.commitment_requests
    # Past the commitment timeout: nothing expired, nothing was sent again.
    time.sleep(25)
    assert pacs.commitment_requests == requests
    assert "no Storage Commitment report" not in outpost.log_text(), outpost.log_tail(20)


# ---------------------------------------------------------------------------------------
# 9. `outpost status`, asked of the running service.


@pytest.mark.timeout(60)
def test_status_reports_the_archive_and_forwarding_of_the_running_service(outposts,
                                                                          small_corpus):
    from harness import run_outpost

    outpost = outposts(destinations=[dicom_destination("central", free_port())])
    files = [f for f in small_corpus.files if f["TransferSyntaxUID"] == EXPLICIT_LE][:3]
    storescu_corpus(outpost.port, small_corpus, files)
    wait_queue(outpost, "central", "the destination is down with 3 queued",
               lambda r: r["live"]["state"] == "down" and r["queue"]["depth"] == 3)

    r = run_outpost("status", "--config", outpost.config_path, "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["ae_title"] == "OUTPOST" and status["version"], status
    assert status["instances"] == 3, status
    assert status["uptime_s"] >= 0 and status["listening"] == [f"DICOM 127.0.0.1:{outpost.port}"]
    assert status["usage"]["stored_bytes"] > 0, status
    [row] = status["destinations"]
    assert row["queue"]["depth"] == 3 and row["live"]["state"] == "down", row
    assert "refused" in row["live"]["last_error"].lower(), row

    text = run_outpost("status", "--config", outpost.config_path)
    assert text.returncode == 0, text.stderr
    assert "3 instances" in text.stdout, text.stdout
    assert "forwarding to central: dicom down, 3 queued" in text.stdout, text.stdout

    outpost.terminate()
    stopped = run_outpost("status", "--config", outpost.config_path)
    assert stopped.returncode != 0
    assert "cannot reach the running service" in stopped.stderr, stopped.stderr


def status_cli(outpost, *args):
    outpost.write_config()
    return run_outpost("status", "--config", outpost.config_path, *args, timeout=30)


@pytest.mark.timeout(90)
def test_dead_letters_that_block_eviction_are_an_alert_and_release_claim_lets_them_go(
        outposts, small_corpus, request):
    """A destination dead-letters instances: they wait for its confirmation for ever.

    Regression: nothing in `outpost status` said that those instances could never be
    evicted, so the disk filled towards the floor with no warning. Now status lists them
    (count, bytes, what to do) and `outpost queue release-claim` stops them waiting, audited.
    Held corrections are listed and released through the same CLI; asking to release one
    that is not held is refused."""
    picky = PickyScp("PICKY")
    request.addfinalizer(picky.stop)
    outpost = outposts(destinations=[dicom_destination("picky", picky.port,
                                                       ae_title="PICKY")])
    mr = next(f for f in small_corpus.files if f["SOPClassUID"] != CT_IMAGE
              and f["TransferSyntaxUID"] == EXPLICIT_LE)
    storescu_corpus(outpost.port, small_corpus, [mr])
    wait_queue(outpost, "picky", "dead-lettered", lambda r: r["queue"]["dead"] == 1)

    s = json.loads(status_cli(outpost, "--json").stdout)
    [claim] = s["stalled_claims"]
    assert claim["destination"] == "picky" and claim["configured"], claim
    assert claim["instances"] == 1 and claim["bytes"] > 0 and claim["sole"] == 1, claim
    text = status_cli(outpost).stdout
    assert "1 instance(s)" in text and "never evicted" in text, text
    assert "outpost queue release-claim picky" in text, text

    r = queue_cli(outpost, "corrections")
    assert r.returncode == 0 and "no held corrections" in r.stdout, (r.stdout, r.stderr)
    r = queue_cli(outpost, "release-corrections", "--sop", "1.2.3.4")
    assert r.returncode != 0 and "no held correction 1.2.3.4" in r.stderr, r.stderr

    r = queue_cli(outpost, "release-claim", "picky")
    assert r.returncode == 0, r.stderr
    assert "1 instance(s)" in r.stdout and "stay local" in r.stdout, r.stdout
    wait_for(lambda: not json.loads(status_cli(outpost, "--json").stdout)["stalled_claims"],
             10, "the claim released")
    r = queue_cli(outpost, "release-claim", "picky")
    assert r.returncode != 0 and "no instance waits in vain" in r.stderr, r.stderr
    events = [json.loads(line) for line in outpost.audit_path.read_text().splitlines()]
    assert any(e["event"] == "operator-action" and "release-claim" in (e.get("detail") or "")
               for e in events), events


@pytest.mark.timeout(90)
def test_a_held_correction_is_listed_then_released_with_the_cli(outposts, tmp_path, request):
    """With `duplicates = "overwrite"`, a technologist sent a corrected CT and a keep-first
    PACS acknowledged it (archive-review §7): the acknowledgement proves nothing about which
    version the PACS kept, so the correction is held local rather than evicted.

    Regression: only the refusals of `outpost queue release-corrections` were tested; a
    release that worked was never run through the CLI. Now the held correction is listed,
    released (audited), and no longer held."""
    picky = PickyScp("PICKY")
    request.addfinalizer(picky.stop)
    outpost = outposts(destinations=[dicom_destination("picky", picky.port,
                                                       ae_title="PICKY")],
                       storage={"duplicates": "overwrite"})
    study, sop = synth.uid(8, 1), synth.uid(8, 3, 1)
    versions = [synth.write(tmp_path / f"v{n}.dcm", synth.ct_instance(
        patient_id="P8", study_uid=study, series_uid=synth.uid(8, 2), sop_uid=sop,
        instance_number=1, seed=n)) for n in (1, 2)]
    for n, v in enumerate(versions, start=1):
        assert net.store_files(outpost.port, [v]) == {v: 0}
        wait_for(lambda: len(picky.recorder.received) == n, 20, f"version {n} delivered")
    wait_queue(outpost, "picky", "delivered", lambda r: r["queue"]["depth"] == 0)

    r = queue_cli(outpost, "corrections")
    assert r.returncode == 0 and sop in r.stdout and "picky" in r.stdout, (r.stdout, r.stderr)
    r = queue_cli(outpost, "release-corrections", "--sop", sop)
    assert r.returncode == 0, r.stderr
    assert "released 1 held correction(s)" in r.stdout and sop in r.stdout, r.stdout
    r = queue_cli(outpost, "corrections")
    assert r.returncode == 0 and "no held corrections" in r.stdout, r.stdout
    r = queue_cli(outpost, "release-corrections", "--sop", sop)
    assert r.returncode != 0 and f"no held correction {sop}" in r.stderr, r.stderr
    events = [json.loads(line) for line in outpost.audit_path.read_text().splitlines()]
    assert any(e["event"] == "operator-action" and "released 1 held correction"
               in (e.get("detail") or "") for e in events), events


def quarantine_cli(outpost, *args):
    outpost.write_config()
    return run_outpost("quarantine", "--config", outpost.config_path, *args, timeout=30)


@pytest.mark.timeout(90)
def test_quarantined_instances_are_counted_in_status_and_resolved_with_the_cli(
        outposts, tmp_path):
    """A technologist picked the wrong worklist entry: a CT of patient P1 opened study S,
    then an image of P2 arrived naming the same S (archive-review §8).

    Regression: the store held the P2 image in quarantine, but nothing outside the store
    could see or resolve it: `outpost status` did not count it and there was no command to
    list, assign or delete it, so it stayed held for ever, invisible. Now status warns with
    the count, `outpost quarantine list` shows it, `assign` files it under S (audited, naming
    both patients), `delete` removes one and `split` files one as a study of its own patient
    (it was refused until the archive could make the new UIDs); a number that is not held is
    refused."""
    outpost = outposts()
    study = synth.uid(7, 1)
    files = {
        name: synth.write(tmp_path / f"{name}.dcm", synth.ct_instance(
            patient_id=pid, study_uid=study, series_uid=synth.uid(7, 2, series),
            sop_uid=synth.uid(7, 3, n), instance_number=n))
        for name, pid, series, n in [("ct", "P1", 1, 1), ("wrong", "P2", 2, 2),
                                     ("worse", "P3", 3, 3), ("split", "P4", 4, 4)]
    }
    assert net.store_files(outpost.port, [files["ct"], files["wrong"]]) == {
        files["ct"]: 0, files["wrong"]: 0}

    s = json.loads(status_cli(outpost, "--json").stdout)
    assert s["quarantined"] == 1, s
    text = status_cli(outpost).stdout
    assert "1 instance(s) held in quarantine" in text and "outpost quarantine list" in text, text

    r = quarantine_cli(outpost, "list")
    assert r.returncode == 0, r.stderr
    assert synth.uid(7, 3, 2) in r.stdout and "P2" in r.stdout and "P1" in r.stdout, r.stdout
    [held] = json.loads(quarantine_cli(outpost, "--json", "list").stdout)
    assert held["sop_instance_uid"] == synth.uid(7, 3, 2), held
    assert held["patient_id"] == "P2" and held["study_patient_id"] == "P1", held
    assert held["study_uid"] == study, held

    p2 = net.find_once(outpost.port, "P", net.query("PATIENT", PatientID="P2"))
    assert p2.status == 0 and not p2.matches, p2
    assert net.count_images(outpost.port, [study]) == 1

    r = quarantine_cli(outpost, "assign", held["seq"])
    assert r.returncode == 0, r.stderr
    assert synth.uid(7, 3, 2) in r.stdout and "P1" in r.stdout, r.stdout
    wait_for(lambda: net.count_images(outpost.port, [study]) == 2, 10,
             "the assigned instance filed under its study")
    assert json.loads(status_cli(outpost, "--json").stdout)["quarantined"] == 0
    r = quarantine_cli(outpost, "assign", held["seq"])
    assert r.returncode != 0 and f"quarantine number {held['seq']}" in r.stderr, r.stderr

    assert net.store_files(outpost.port, [files["worse"]]) == {files["worse"]: 0}
    [again] = json.loads(quarantine_cli(outpost, "--json", "list").stdout)
    assert again["sop_instance_uid"] == synth.uid(7, 3, 3) and again["seq"] != held["seq"]
    r = quarantine_cli(outpost, "delete", again["seq"])
    assert r.returncode == 0, r.stderr
    assert json.loads(quarantine_cli(outpost, "--json", "list").stdout) == []
    assert "no instance is held" in quarantine_cli(outpost, "list").stdout
    assert net.count_images(outpost.port, [study]) == 2

    # A number already resolved is refused, whatever the decision.
    r = quarantine_cli(outpost, "split", again["seq"])
    assert r.returncode != 0 and f"quarantine number {again['seq']}" in r.stderr, r.stderr

    # Split: an image of P4 naming S becomes a study of P4's own, found under P4 and
    # retrievable, while S keeps its two instances.
    assert net.store_files(outpost.port, [files["split"]]) == {files["split"]: 0}
    [third] = json.loads(quarantine_cli(outpost, "--json", "list").stdout)
    r = quarantine_cli(outpost, "split", third["seq"])
    assert r.returncode == 0, r.stderr
    assert synth.uid(7, 3, 4) in r.stdout and "study of its own" in r.stdout, r.stdout
    assert json.loads(quarantine_cli(outpost, "--json", "list").stdout) == []
    p4 = net.find_once(outpost.port, "S", net.query("STUDY", PatientID="P4",
                                                     StudyInstanceUID=""))
    assert p4.status == 0 and len(p4.matches) == 1, p4
    new_study = p4.matches[0].StudyInstanceUID
    assert new_study != study and new_study.startswith("2.25."), new_study
    assert new_study in r.stdout, r.stdout
    assert net.count_images(outpost.port, [new_study]) == 1
    assert net.count_images(outpost.port, [study]) == 2

    events = [json.loads(line) for line in outpost.audit_path.read_text().splitlines()]
    actions = [e.get("detail") or "" for e in events if e["event"] == "operator-action"]
    assert any("quarantine assign" in d and synth.uid(7, 3, 2) in d and "P1" in d
               and "P2" in d and study in d for d in actions), actions
    assert any("quarantine delete" in d and synth.uid(7, 3, 3) in d and "P3" in d
               for d in actions), actions
    assert any("quarantine split" in d and synth.uid(7, 3, 4) in d and new_study in d
               for d in actions), actions
