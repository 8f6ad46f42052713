"""A simulated APC Smart-UPS (SMT/SRT/SMX) on Modbus TCP, served by pymodbus: a Modbus
implementation other than the tokio-modbus one Outpost uses, so the client is checked
against a server nobody here wrote.

The register map is the one of Outpost's `apc-smt` profile (configs/ups/apc-smt.toml, from
NUT's apc_modbus driver and APC's register map 990-9840): holding registers, 0-based,
big-endian, 32-bit values high word first.

    sim = UpsSimulator()
    sim.start()                       # 127.0.0.1, a free port: sim.port
    sim.online(runtime_s=3600)
    sim.on_battery(runtime_s=600, charge_pct=40.0)
    sim.low_battery(runtime_s=90)     # also sets SimpleSignalingStatus ShutdownImminent
    sim.silence(True)                 # takes requests, never answers (a hung card)
    sim.writes                        # [(address, [values]), ...] the client wrote
    sim.stop()

    UpsSimulator(serial_port="/dev/pts/7")  # Modbus RTU on a serial line instead, 9600 8N1

Written for pymodbus 3.16 (tests/requirements.txt), whose server takes a SimDevice with an
`action` hook; the ModbusServerContext/ModbusDeviceContext classes of earlier 3.x releases
are deprecated there.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# UPSStatus_BF (u32 at 0..1).
STATUS = 0
ONLINE = 1 << 1
ON_BATTERY = 1 << 2
INPUT_BAD = 1 << 6
# SimpleSignalingStatus_BF (18) and BatterySystemError_BF (19).
SIGNALING = 18
SHUTDOWN_IMMINENT = 1 << 1
BATTERY_ERROR = 19
NEEDS_REPLACEMENT = 1 << 2
# Measurements: RunTimeRemaining (u32, s), StateOfCharge (/512 %), BatteryVoltage (i16,
# /32 V), BatteryTemperature (i16, /128 C), load (/256 %), output and input voltage (/64 V).
RUNTIME = 128
CHARGE = 130
BATTERY_V = 131
TEMPERATURE = 135
LOAD = 136
OUTPUT_V = 142
INPUT_V = 151
# Settings and commands: the main outlet group's turn-off countdown (i16, s) and
# OutletCommand_BF (u32 at 1538..1539).
TURN_OFF_COUNTDOWN = 1029
OUTLET_COMMAND = 1538
CMD_OUTPUT_SHUTDOWN = 1 << 3
USE_OFF_DELAY = 1 << 7
MAIN_OUTLET_GROUP = 1 << 8

SIZE = 1600          # registers 0..1599, all readable and writable


class UpsSimulator:
    """Serves the APC SMT register map on 127.0.0.1 in a background thread."""

    def __init__(self, unit_id: int = 1, host: str = "127.0.0.1", port: int = 0,
                 serial_port: str | None = None, baudrate: int = 9600):
        self.unit_id = unit_id
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.host = host
        self.port = port            # the bound port once started (0 asks for a free one)
        self._lock = threading.Lock()
        self._regs = [0] * SIZE
        self._writes: list[tuple[int, list[int]]] = []
        self._silent = False
        self._requests = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.online()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="upssim", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the UPS simulator did not start within 10 s")
        if self._error:
            raise RuntimeError(f"the UPS simulator did not start: {self._error}")

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> UpsSimulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        device = SimDevice(
            id=self.unit_id,
            simdata=[SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        if self.serial_port:
            server = ModbusSerialServer(device, framer=FramerType.RTU, port=self.serial_port,
                                        baudrate=self.baudrate)
            await server.serve_forever(background=True)
        else:
            server = ModbusTcpServer(device, address=(self.host, self.port))
            await server.serve_forever(background=True)
            self.port = server.transport.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        with self._lock:
            self._silent = False        # let requests held by silence() finish
        await server.shutdown()

    async def _action(self, function_code, start_address, address, count,
                      registers, set_values):
        """pymodbus calls this for every request before it answers from `registers` (the
        device's own copy, starting at `start_address`): reads get the simulator's values
        copied in, writes are recorded and applied to them."""
        with self._lock:
            self._requests += 1
        # A hung card: the connection stays open and the request is never answered (until
        # silence ends, when it is answered late, as a slow card would).
        while True:
            with self._lock:
                if not self._silent:
                    break
            await asyncio.sleep(0.05)
        offset = address - start_address
        with self._lock:
            if set_values:
                values = [int(v) for v in set_values]
                self._writes.append((address, values))
                self._regs[address:address + len(values)] = values
            registers[offset:offset + count] = self._regs[address:address + count]
        return None

    # -- state -------------------------------------------------------------------------

    def _set(self, address: int, values: list[int]) -> None:
        with self._lock:
            self._regs[address:address + len(values)] = [v & 0xFFFF for v in values]

    def _u32(self, address: int, value: int) -> None:
        self._set(address, [(value >> 16) & 0xFFFF, value & 0xFFFF])

    def _measures(self, runtime_s: int, charge_pct: float, load_pct: float,
                  battery_v: float) -> None:
        self._u32(RUNTIME, int(runtime_s))
        self._set(CHARGE, [round(charge_pct * 512), round(battery_v * 32)])
        self._set(TEMPERATURE, [round(25.0 * 128), round(load_pct * 256)])
        self._set(OUTPUT_V, [round(230.0 * 64)])

    def _status(self, bits: int, signaling: int) -> None:
        self._u32(STATUS, bits)
        with self._lock:
            self._regs[SIGNALING] = signaling
            # Keep a battery-replacement request across state changes.
            self._regs[BATTERY_ERROR] &= NEEDS_REPLACEMENT

    def online(self, runtime_s: int = 3600, charge_pct: float = 100.0,
               load_pct: float = 20.0, battery_v: float = 27.0) -> None:
        """On mains."""
        self._measures(runtime_s, charge_pct, load_pct, battery_v)
        self._set(INPUT_V, [round(230.0 * 64)])
        self._status(ONLINE, 0)

    def on_battery(self, runtime_s: int, charge_pct: float = 50.0, load_pct: float = 20.0,
                   battery_v: float = 25.0) -> None:
        """Mains lost, battery left."""
        self._measures(runtime_s, charge_pct, load_pct, battery_v)
        self._set(INPUT_V, [0xFFFF])       # "not available", as the UPS reports no input
        self._status(ON_BATTERY | INPUT_BAD, 0)

    def low_battery(self, runtime_s: int, charge_pct: float = 10.0, load_pct: float = 20.0,
                    battery_v: float = 23.0) -> None:
        """On battery with SimpleSignalingStatus ShutdownImminent (NUT's "LB") set."""
        self.on_battery(runtime_s, charge_pct, load_pct, battery_v)
        self._status(ON_BATTERY | INPUT_BAD, SHUTDOWN_IMMINENT)

    def replace_battery(self, on: bool = True) -> None:
        """BatterySystemError_BF NeedsReplacement."""
        with self._lock:
            if on:
                self._regs[BATTERY_ERROR] |= NEEDS_REPLACEMENT
            else:
                self._regs[BATTERY_ERROR] &= ~NEEDS_REPLACEMENT & 0xFFFF

    def silence(self, on: bool) -> None:
        """Stop (or resume) answering; connections stay open."""
        with self._lock:
            self._silent = on

    # -- what the client did -----------------------------------------------------------

    @property
    def writes(self) -> list[tuple[int, list[int]]]:
        """Every write, in order: (first address, values)."""
        with self._lock:
            return [(a, list(v)) for a, v in self._writes]

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def registers(self, address: int, count: int = 1) -> list[int]:
        with self._lock:
            return list(self._regs[address:address + count])

    def turn_off_countdown(self) -> int | None:
        """The last value written to the main outlet group's turn-off countdown (1029)."""
        for address, values in reversed(self.writes):
            if address <= TURN_OFF_COUNTDOWN < address + len(values):
                v = values[TURN_OFF_COUNTDOWN - address]
                return v - 0x10000 if v & 0x8000 else v
        return None

    def outlet_command(self) -> int | None:
        """The last OutletCommand_BF written (a u32 at 1538..1539), if any."""
        for address, values in reversed(self.writes):
            if address == OUTLET_COMMAND and len(values) == 2:
                return (values[0] << 16) | values[1]
        return None

    def outlet_off_requested(self) -> bool:
        """Whether the client sent "shutdown" (off after the turn-off countdown, on again when
        mains returns) to the main outlet group."""
        command = self.outlet_command()
        wanted = CMD_OUTPUT_SHUTDOWN | USE_OFF_DELAY | MAIN_OUTLET_GROUP
        return command is not None and command & wanted == wanted


# pymodbus logs every client that leaves mid-request (the timeout tests do) as an error.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
