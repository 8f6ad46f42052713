"""SIGTERM with an association open and idle: the listener closes at once, the association
gets shutdown_grace_s to finish and is then aborted, the process exits 0 soon after, and
what was acknowledged before the signal is there after a restart."""

from __future__ import annotations

import signal
import time

import dicomnet as net
import synth
from harness import EXPLICIT_LE, dataset_bytes, port_accepts

GRACE = 3


def test_sigterm_with_idle_association(outposts, tmp_path):
    o = outposts("shutdown", dicom={"shutdown_grace_s": GRACE})
    data = synth.ct_instance(patient_id="SHUT", study_uid=synth.uid(60, 1),
                             series_uid=synth.uid(61, 1), sop_uid=synth.uid(62, 1),
                             rows=64, cols=64)
    path = synth.write(tmp_path / "one.dcm", data)
    ae = net.make_ae("IDLESCU")
    ae.add_requested_context(synth.CT_IMAGE, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", o.port, ae_title="OUTPOST")
    try:
        assert assoc.is_established
        net.park(assoc)
        assert assoc.send_c_store(path).Status == net.SUCCESS
        # Open and idle from here on.
        time.sleep(0.2)
        t0 = time.monotonic()
        o.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert not port_accepts(o.port), "still accepting connections after SIGTERM"
        assert o.alive(), "exited before the grace period although an association was open"
        rc = o.proc.wait(GRACE + 5)
        took = time.monotonic() - t0
        assert rc == 0, o.log_tail()
        assert GRACE - 0.5 <= took <= GRACE + 3, f"exited {took:.2f} s after SIGTERM"
        # The idle association was aborted, not left hanging.
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted, "the idle association was not aborted"
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    log = o.log_text()
    assert "grace period over; aborting associations still running" in log
    assert "aborted: the service is stopping" in log
    assert "index writer stopped" in log and "outpost stopped" in log
    audit = o.audit_path.read_text()
    assert "stopped on SIGTERM; 1 association(s) aborted at the deadline" in audit

    # After a restart the acknowledged instance is there, byte for byte.
    o.start()
    result, rec = net.get(o.port, "S", net.query("STUDY", StudyInstanceUID=synth.uid(60, 1)),
                          [(synth.CT_IMAGE, [EXPLICIT_LE])])
    assert (result.status, result.completed) == (net.SUCCESS, 1)
    assert rec.received[0].dataset == dataset_bytes(data)
    assert o.terminate() == 0


def test_sigterm_without_associations_exits_promptly(outposts):
    o = outposts("quick", dicom={"shutdown_grace_s": 20})
    t0 = time.monotonic()
    assert o.terminate(timeout=10) == 0
    assert time.monotonic() - t0 < 3, "waited for a grace period with nothing running"
