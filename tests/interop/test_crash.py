"""kill -9 during ingest, several times, on the same data directory.

Each round: start `outpost serve` (durability "full"), let 4 concurrent pynetdicom
associations store fresh instances (small CT images and a few of several MB, distinct
UIDs), and record for each instance whether a success status came back; kill -9 the server
after a random delay (seeded; the seed and every delay are printed); restart on the same
data directory and check that

- every acknowledged instance is found by C-FIND and retrieved (C-GET) byte for byte as sent;
- everything C-FIND finds at IMAGE level is retrievable and intact (nothing partial is
  visible), and is one of the instances that were sent;
- the instances of earlier rounds are all still there;
- after a SIGTERM, `outpost verify` reports no problem.

The C-FIND walks use the raw client in dicomnet.py (pynetdicom can drop the first response
of an operation on a busy association: see dicomnet.park).

OUTPOST_CRASH_SEED sets the seed (default: a fixed one), OUTPOST_CRASH_ROUNDS the rounds.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dicomnet as net
import synth
from harness import EXPLICIT_LE, dataset_bytes

SEED = int(os.environ.get("OUTPOST_CRASH_SEED", "20240115"))
ROUNDS = int(os.environ.get("OUTPOST_CRASH_ROUNDS", "5"))
THREADS = 4
SMALL_PER_THREAD = 110
LARGE_PER_THREAD = 2


@dataclass
class Instance:
    path: Path
    sop: str
    study: str
    series: str
    dataset: bytes
    acked: bool = False
    status: int | None = None


@dataclass
class Round:
    number: int
    studies: list[str]
    lanes: list[list[Instance]] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return [i for lane in self.lanes for i in lane]


def make_round(number: int, rng: random.Random, workdir: Path) -> Round:
    """One study per association, two series each; small images of varied sizes and, at
    random places, a few of 1 to 4 MB."""
    r = Round(number, [])
    for t in range(THREADS):
        study = synth.uid(50, number, t)
        r.studies.append(study)
        sizes = [rng.choice([(8, 8), (16, 16), (32, 32), (64, 64), (128, 128)])
                 for _ in range(SMALL_PER_THREAD)]
        for _ in range(LARGE_PER_THREAD):
            side = rng.choice([724, 1024, 1448])  # 1, 2, 4 MB of 16-bit samples
            sizes.insert(rng.randrange(len(sizes) + 1), (side, side))
        lane = []
        for n, (rows, cols) in enumerate(sizes, start=1):
            series = synth.uid(51, number, t, 1 + n % 2)
            sop = synth.uid(52, number, t, n)
            data = synth.ct_instance(patient_id=f"CRASH{number}", study_uid=study,
                                     series_uid=series, sop_uid=sop, instance_number=n,
                                     rows=rows, cols=cols, seed=SEED)
            path = synth.write(workdir / f"r{number}" / f"{t}-{n}.dcm", data)
            lane.append(Instance(path, sop, study, series, dataset_bytes(data)))
        r.lanes.append(lane)
    return r


def store_lane(port: int, lane: list[Instance], ae_title: str, started: threading.Event,
               errors: list) -> None:
    try:
        # pynetdicom sometimes misses the connection loss while it waits for a response
        # and then waits out its DIMSE timeout; keep that short.
        with net.association(port, [(synth.CT_IMAGE, [EXPLICIT_LE])], ae_title=ae_title,
                             dimse_timeout=5) as a:
            started.set()
            for inst in lane:
                if not a.is_established:
                    return
                net.park(a)
                status = a.send_c_store(inst.path)
                inst.status = int(status.Status) if "Status" in status else None
                inst.acked = inst.status == net.SUCCESS
                if inst.status is None:
                    return
    except Exception as e:  # the server is killed under us: expected
        started.set()
        errors.append(repr(e))


def retrieve_and_compare(port: int, studies: list[str], found: dict[str, str],
                         sent: dict[str, Instance]) -> None:
    for study in studies:
        want = sorted(sop for sop, st in found.items() if st == study)
        if not want:
            continue
        result, rec = net.get(port, "S", net.query("STUDY", StudyInstanceUID=study),
                              [(synth.CT_IMAGE, [EXPLICIT_LE])], ae_title="CRASHGET")
        assert result.status == net.SUCCESS, f"C-GET {study}: {result.final}"
        assert (result.completed, result.failed) == (len(want), 0)
        got = rec.by_uid()
        assert sorted(got) == want, f"C-GET of {study} differs from C-FIND"
        for sop, r in got.items():
            assert r.transfer_syntax == EXPLICIT_LE
            if r.dataset != sent[sop].dataset:
                raise AssertionError(
                    f"{sop} retrieved damaged: {len(r.dataset)} bytes, "
                    f"{len(sent[sop].dataset)} sent, acknowledged={sent[sop].acked}")


@pytest.mark.timeout(170)
def test_kill9_during_ingest(outposts, tmp_path):
    rng = random.Random(SEED)
    print(f"\ncrash test: seed {SEED} (set OUTPOST_CRASH_SEED to replay), {ROUNDS} rounds")
    outpost = outposts("crash", start=False, storage={"durability": "full"})
    sent: dict[str, Instance] = {}
    expected_found: dict[str, str] = {}     # what C-FIND found after earlier rounds
    rounds: list[Round] = []
    mid_ingest = 0
    for number in range(1, ROUNDS + 1):
        rnd = make_round(number, rng, tmp_path / "instances")
        rounds.append(rnd)
        for inst in rnd.instances:
            sent[inst.sop] = inst
        delay = rng.uniform(0.1, 0.8)

        outpost.start()
        started = [threading.Event() for _ in rnd.lanes]
        errors: list = []
        threads = [threading.Thread(target=store_lane, daemon=True,
                                    args=(outpost.port, lane, f"CRASH{t}", started[t], errors))
                   for t, lane in enumerate(rnd.lanes)]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(15), "a storing association did not start"
        t0 = time.monotonic()
        time.sleep(delay)
        acked_at_kill = sum(i.acked for i in rnd.instances)
        outpost.kill()
        killed_after = time.monotonic() - t0
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a storing thread hung after the kill"
        acked = [i for i in rnd.instances if i.acked]
        if len(acked) < len(rnd.instances):
            mid_ingest += 1
        print(f"round {number}: kill -9 after {delay:.3f} s "
              f"({killed_after:.3f} s measured), {len(acked)} of "
              f"{len(rnd.instances)} acknowledged ({acked_at_kill} seen before the kill)")

        # Restart on the same data directory.
        outpost.start()
        all_studies = [s for r in rounds for s in r.studies]
        found = net.walk_images(outpost.port, all_studies)
        unknown = set(found) - set(sent)
        assert not unknown, f"C-FIND finds instances nobody sent: {sorted(unknown)[:5]}"
        lost = [i.sop for i in sent.values() if i.acked and i.sop not in found]
        assert not lost, f"round {number}: {len(lost)} acknowledged instances lost: {lost[:5]}"
        vanished = set(expected_found) - set(found)
        assert not vanished, f"instances of earlier rounds vanished: {sorted(vanished)[:5]}"
        extra = [s for s in found if s not in expected_found and not sent[s].acked]
        print(f"round {number}: after restart C-FIND finds {len(found)} instances "
              f"({len(extra)} stored but not acknowledged before the kill)")
        # Everything found in this round's studies comes back byte for byte.
        retrieve_and_compare(outpost.port, rnd.studies, found, sent)
        expected_found = found

        assert outpost.terminate() == 0, outpost.log_tail()
        v = outpost.cli("verify")
        assert v.returncode == 0, f"outpost verify after round {number}:\n{v.stdout}{v.stderr}"
        assert f"verified {len(found)} instances" in v.stdout and "0 problem(s)" in v.stdout, v.stdout

    # Once more at the end: every instance of every round comes back intact.
    outpost.start()
    all_studies = [s for r in rounds for s in r.studies]
    found = net.walk_images(outpost.port, all_studies)
    assert found == expected_found
    retrieve_and_compare(outpost.port, all_studies, found, sent)
    assert outpost.terminate() == 0
    # The kill has to land while instances were still arriving for the test to mean much.
    assert mid_ingest == ROUNDS, f"only {mid_ingest} of {ROUNDS} kills landed mid-ingest"
    log = outpost.log_text()
    assert log.count("archive open") == 2 * ROUNDS + 1
