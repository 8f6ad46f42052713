"""systemd notifications: `outpost serve` under a fake service manager.

The test binds a Unix datagram socket, runs the binary with NOTIFY_SOCKET pointing at it and
WATCHDOG_USEC=500000 (WATCHDOG_PID is left unset: libsystemd compares it with getpid(), and
the child's pid is not known before it starts), and reads what arrives: READY=1 once the
port accepts connections, WATCHDOG=1 at least every 0.5 s, STOPPING=1 after SIGTERM, then
exit status 0. The binary must be built with `--features systemd`.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from harness import port_accepts, reachable

WATCHDOG_USEC = 500_000
BUILD_HINT = ("no sd_notify message arrived: is the binary built with the systemd feature? "
              "Build it with `cargo build --release -p outpost --features systemd`")


class NotifySocket:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # The service may run as another user (harness.unit_user): let it send.
        os.chmod(path, 0o777)
        reachable(Path(path).parent)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.cond:
                self.messages.append((time.monotonic(), fields))
                self.cond.notify_all()

    def wait_for(self, key: str, value: str = "1", timeout: float = 20,
                 after: float = 0) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, m in self.messages:
                    if t >= after and m.get(key) == value:
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value} within {timeout} s; got "
                                         f"{[m for _, m in self.messages]}")
                self.cond.wait(left)

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        with self.cond:
            return [(t, m) for t, m in self.messages if key in m]

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def test_ready_watchdog_stopping(outposts, notify_socket):
    o = outposts("notify", start=False, dicom={"shutdown_grace_s": 2})
    o.start(env={"NOTIFY_SOCKET": str(notify_socket.path),
                 "WATCHDOG_USEC": str(WATCHDOG_USEC)}, wait=False)

    # READY=1, and by then the port accepts connections.
    try:
        ready_at, ready = notify_socket.wait_for("READY", timeout=20)
    except AssertionError as e:
        if not notify_socket.messages:
            pytest.fail(f"{BUILD_HINT}\n{e}\n{o.log_tail()}")
        raise
    assert port_accepts(o.port), "READY=1 was sent before the port accepted connections"
    assert ready.get("STATUS", "").startswith(f"serving OUTPOST on 127.0.0.1:{o.port}"), ready
    assert len([m for _, m in notify_socket.with_key("READY")]) == 1
    # Before READY=1: more start-up time asked for, while the archive opens.
    assert any("EXTEND_TIMEOUT_USEC" in m for t, m in notify_socket.messages if t <= ready_at)

    # WATCHDOG=1, repeatedly, never more than WATCHDOG_USEC apart.
    time.sleep(2.0)
    pings = [t for t, m in notify_socket.with_key("WATCHDOG") if m["WATCHDOG"] == "1"]
    assert len(pings) >= 4, f"{len(pings)} WATCHDOG=1 in 2 s with WATCHDOG_USEC=500000"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog gaps {gaps}"
    assert pings[0] >= ready_at - 0.05

    # SIGTERM: STOPPING=1, then exit 0.
    term_at = time.monotonic()
    o.proc.send_signal(signal.SIGTERM)
    stopping_at, stopping = notify_socket.wait_for("STOPPING", timeout=10, after=term_at)
    assert stopping_at - term_at < 2, "STOPPING=1 took long"
    assert o.proc.wait(15) == 0, o.log_tail()
    assert "outpost stopped" in o.log_text()
