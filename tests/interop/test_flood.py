"""A flood before association against the real `outpost serve` (issue 9, A.1).

An attacker on the modality network held 40 silent TCP connections open (more than the 32
association slots), then 2,000 that each sent 4 bytes of a PDU header, from the caller's own
address (here loopback, as behind NAT). Before the fix DCMTK's echoscu from the configured
modality was refused for the whole association timeout. Now silent connections never hold
association slots, the oldest incomplete connections of a source are closed when it has too
many, and the process stays well under 200 MB resident.
"""

from __future__ import annotations

import resource
import socket
import time

import pytest

from harness import dcmtk


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of a process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


@pytest.fixture
def server(outposts):
    # The flood needs ~2,100 descriptors in this process too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    return outposts("flood", remotes=[{"ae_title": "CT1", "host": "127.0.0.1", "port": 104}],
                    dicom={"accept_unknown_callers": False})


def echo_ct1(port: int) -> float:
    start = time.monotonic()
    dcmtk("echoscu", "-aet", "CT1", "-aec", "OUTPOST", "-to", "5", "-ta", "5",
          "127.0.0.1", port, timeout=10)
    return time.monotonic() - start


def test_flood_before_association(server):
    flood: list[socket.socket] = []
    try:
        for _ in range(40):
            flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.3)
        took = echo_ct1(server.port)
        assert took < 2, f"C-ECHO behind 40 silent sockets took {took:.2f} s"
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"\x01\x00\x00\x00")
            flood.append(s)
        time.sleep(0.5)
        took = echo_ct1(server.port)
        assert took < 2, f"C-ECHO behind 2,000 half headers took {took:.2f} s"
        rss, hwm = rss_mb(server.pid)
        print(f"outpost RSS {rss:.1f} MB, peak {hwm:.1f} MB during the flood")
        assert hwm < 200, f"peak RSS {hwm:.1f} MB"
        assert server.alive(), server.log_tail()
    finally:
        for s in flood:
            s.close()
    assert echo_ct1(server.port) < 2
