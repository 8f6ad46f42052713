"""The UPS simulator itself, read with pymodbus's own client: if a pymodbus upgrade changes the
server API again (it did across 3.x), this fails with a plain message instead of the hardware
tests failing in odd ways."""

from __future__ import annotations

import time

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from upssim import UpsSimulator


@pytest.fixture
def sim():
    with UpsSimulator() as s:
        yield s


def client(sim: UpsSimulator) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.5, retries=0)
    assert c.connect()
    return c


def holding(c: ModbusTcpClient, address: int, count: int) -> list[int]:
    r = c.read_holding_registers(address, count=count, device_id=1)
    assert not r.isError(), r
    return r.registers


@pytest.mark.timeout(30)
def test_states_use_the_apc_register_map(sim):
    c = client(sim)
    sim.online(runtime_s=70_000, charge_pct=37.5, load_pct=42.25, battery_v=27.5)
    status = holding(c, 0, 20)
    assert (status[0] << 16 | status[1], status[18], status[19]) == (1 << 1, 0, 0)
    dynamic = holding(c, 128, 9)
    assert dynamic[0] << 16 | dynamic[1] == 70_000
    assert (dynamic[2] / 512, dynamic[3] / 32, dynamic[8] / 256) == (37.5, 27.5, 42.25)

    sim.on_battery(runtime_s=600, charge_pct=40.0)
    status = holding(c, 0, 20)
    assert status[1] & (1 << 2) and not status[1] & (1 << 1) and status[18] == 0
    assert holding(c, 151, 1) == [0xFFFF]

    sim.low_battery(runtime_s=90)
    status = holding(c, 0, 20)
    assert status[1] & (1 << 2) and status[18] == 1 << 1

    sim.replace_battery(True)
    sim.online()
    assert holding(c, 19, 1) == [1 << 2]
    c.close()


@pytest.mark.timeout(30)
def test_writes_are_recorded(sim):
    c = client(sim)
    assert not c.write_registers(1029, [90], device_id=1).isError()
    assert not c.write_registers(1538, [0x0000, 0x8188], device_id=1).isError()
    assert sim.writes == [(1029, [90]), (1538, [0x0000, 0x8188])]
    assert sim.turn_off_countdown() == 90
    assert sim.outlet_command() == 0x8188
    assert sim.outlet_off_requested()
    assert holding(c, 1029, 1) == [90]
    c.close()


@pytest.mark.timeout(30)
def test_silence_keeps_the_connection_but_answers_nothing(sim):
    c = client(sim)
    sim.silence(True)
    t0 = time.monotonic()
    with pytest.raises(ModbusIOException):
        c.read_holding_registers(0, count=2, device_id=1)
    assert time.monotonic() - t0 < 3
    c.close()
    sim.silence(False)
    c = client(sim)
    assert holding(c, 0, 2) == [0, 1 << 1]
    c.close()
