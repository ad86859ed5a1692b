"""SocketI2C (the node's bus on the Unix port, here on CPython) against I2CBusServer and emulated devices."""
import errno
import socket
import threading
import time

import pytest

from fieldnode.bench.bme280_emu import BME280Emulator
from fieldnode.bench.i2cbus import HEADER, I2CBusServer, Nack
from node.hal.sockbus import SocketI2C
from node.sensors.bme280 import BME280

ADDR = 0x76


class Recorder:
    """A device that stores writes and answers reads from its memory."""

    def __init__(self):
        self.mem = bytearray(range(256))
        self.writes = []

    def read_register(self, reg, n):
        return bytes(self.mem[(reg + i) & 0xFF] for i in range(n))

    def write_register(self, reg, data):
        self.writes.append((reg, bytes(data)))
        for i, b in enumerate(data):
            self.mem[(reg + i) & 0xFF] = b


class Blocking(Recorder):
    """Reads wait until released: a device (or bench) that stops answering."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def read_register(self, reg, n):
        self.entered.set()
        self.release.wait(10)
        return super().read_register(reg, n)


class Broken(Recorder):
    def read_register(self, reg, n):
        raise RuntimeError("emulator bug")


@pytest.fixture
def server():
    with I2CBusServer() as srv:
        yield srv


@pytest.fixture
def emu(server):
    device = BME280Emulator(temperature_c=23.5, humidity_rh=40.0, pressure_pa=99000.0)
    server.bus("node-1").attach(ADDR, device)
    return device


def client(server, name="node-1", timeout_s=2):
    host, port = server.address
    return SocketI2C(host, port, name, timeout_s=timeout_s)


def close_enough(reading, env):
    return all(abs(r - e) <= t for r, e, t in zip(reading, env, (0.01, 0.02, 0.3)))


def test_register_reads_and_writes(server, emu):
    i2c = client(server)
    assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"
    buf = bytearray(26)
    i2c.readfrom_mem_into(ADDR, 0x88, buf)
    assert bytes(buf) == emu.read_register(0x88, 26)
    i2c.writeto_mem(ADDR, 0xF2, b"\x05")
    assert i2c.readfrom_mem(ADDR, 0xF2, 1) == b"\x05"
    i2c.close()


def test_long_writes_and_reads(server):
    dev = Recorder()
    server.bus("node-1").attach(0x10, dev)
    i2c = client(server)
    data = bytes(range(100, 200))  # longer than SocketI2C's inline frame
    i2c.writeto_mem(0x10, 0x20, data)
    i2c.writeto_mem(0x10, 0x05, memoryview(b"\x01\x02"))
    assert dev.writes == [(0x20, data), (0x05, b"\x01\x02")]
    assert i2c.readfrom_mem(0x10, 0x20, 100) == data
    assert i2c.readfrom_mem(0x10, 0x00, 0) == b""


def test_driver_reads_the_emulated_environment(server, emu):
    sensor = BME280(client(server), ADDR)
    assert close_enough(sensor.read(), (23.5, 40.0, 99000.0))
    emu.set_environment(temperature_c=-12.25, humidity_rh=91.0, pressure_pa=70123.0)
    assert close_enough(sensor.read(), (-12.25, 91.0, 70123.0))


def test_nack_is_enodev_and_the_connection_survives(server, emu):
    i2c = client(server)
    sensor = BME280(i2c, ADDR)
    emu.nack = True
    for call in (lambda: i2c.readfrom_mem(ADDR, 0xD0, 1), lambda: i2c.writeto_mem(ADDR, 0xF2, b"\x01"),
                 sensor.read):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.ENODEV
    emu.nack = False
    assert close_enough(sensor.read(), emu.environment)


def test_unknown_address_and_unknown_bus_nack(server, emu):
    with pytest.raises(OSError) as info:
        client(server).readfrom_mem(0x77, 0xD0, 1)
    assert info.value.errno == errno.ENODEV
    with pytest.raises(OSError) as info:
        client(server, "nobody-wired-me").readfrom_mem(ADDR, 0xD0, 1)
    assert info.value.errno == errno.ENODEV
    with pytest.raises(OSError) as info:
        BME280(client(server), 0x77)
    assert info.value.errno == errno.ENODEV


def test_detach_and_attach_while_connected(server, emu):
    i2c = client(server)
    assert i2c.scan() == [ADDR]
    server.bus("node-1").detach(ADDR)
    with pytest.raises(OSError):
        i2c.readfrom_mem(ADDR, 0xD0, 1)
    server.bus("node-1").attach(0x77, emu)
    server.bus("node-1").attach(0x40, Recorder())
    assert i2c.scan() == [0x40, 0x77]
    emu.nack = True
    assert i2c.scan() == [0x40]


def test_buses_are_separate_and_serve_concurrent_nodes(server):
    envs = {f"node-{i}": (10.0 + i, 30.0 + i, 95000.0 + 100 * i) for i in range(4)}
    for name, env in envs.items():
        server.bus(name).attach(ADDR, BME280Emulator(*env))
    results, errors = {}, []
    start = threading.Barrier(len(envs))

    def node(name):
        try:
            sensor = BME280(client(server, name), ADDR)
            start.wait(10)
            results[name] = [sensor.read() for _ in range(5)]
        except Exception as exc:  # surfaced below
            errors.append((name, exc))

    threads = [threading.Thread(target=node, args=(name,)) for name in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    for name, env in envs.items():
        assert all(close_enough(r, env) for r in results[name]), (name, results[name])


def test_timeout_is_etimedout_and_the_next_call_reconnects(server):
    dev = Blocking()
    server.bus("node-1").attach(0x10, dev)
    i2c = client(server, timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        i2c.readfrom_mem(0x10, 0x00, 1)
    assert info.value.errno == errno.ETIMEDOUT
    assert dev.entered.is_set() and time.monotonic() - t0 < 2.0
    dev.release.set()
    assert i2c.readfrom_mem(0x10, 0x05, 2) == b"\x05\x06"  # a fresh connection, no stale reply


@pytest.mark.parametrize("answers", [[None], ["real", 2, None]], ids=["no-status", "part-of-the-data"])
def test_a_micropython_readinto_that_answers_none_is_a_timeout(server, emu, answers):
    """MicroPython's socket readinto returns None when its timeout passes (CPython raises instead)."""
    i2c = client(server)
    assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"  # connected
    real = i2c._readinto
    left = list(answers)

    def readinto(view):
        n = left.pop(0) if left else "real"
        if n == "real":
            return real(view)
        if n is not None:
            view[:n] = bytes(n)
        return n

    i2c._readinto = readinto
    with pytest.raises(OSError) as info:
        i2c.readfrom_mem(ADDR, 0x88, 24)
    assert info.value.errno == errno.ETIMEDOUT and not left
    assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"  # a fresh connection, no stale reply


def test_device_fault_is_eio_and_the_server_keeps_serving(server, emu):
    server.bus("node-1").attach(0x20, Broken())
    i2c = client(server)
    with pytest.raises(OSError) as info:
        i2c.readfrom_mem(0x20, 0x00, 1)
    assert info.value.errno == errno.EIO
    assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"


def test_bad_frames_get_an_error_and_a_closed_connection(server, emu):
    for frame in (HEADER.pack(ord("X"), 0, 0, 0),  # unknown op
                  HEADER.pack(ord("R"), ADDR, 0xD0, 1),  # no bus named first
                  HEADER.pack(ord("N"), 0, 0, 60000)):  # too long
        with socket.create_connection(server.address, timeout=2) as s:
            s.sendall(frame)
            assert s.recv(16) == b"\x02"
            assert s.recv(16) == b""  # closed by the server
    assert client(server).readfrom_mem(ADDR, 0xD0, 1) == b"\x60"


def test_no_network_until_first_use():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        i2c = SocketI2C("127.0.0.1", port, "node-1", timeout_s=1)  # must not connect
        with pytest.raises(OSError) as info:
            i2c.readfrom_mem(ADDR, 0xD0, 1)
    assert info.value.errno == errno.ECONNREFUSED


def test_server_stop_gives_oserror_then_reconnects_to_a_new_server():
    srv = I2CBusServer().start()
    srv.bus("node-1").attach(ADDR, BME280Emulator())
    port = srv.port
    i2c = SocketI2C("127.0.0.1", port, "node-1", timeout_s=2)
    assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 3.0, "stop() waited on a connected node"
    with pytest.raises(OSError):  # the connection was closed under it
        i2c.readfrom_mem(ADDR, 0xD0, 1)
    with pytest.raises(OSError) as info:  # and nobody listens any more
        i2c.readfrom_mem(ADDR, 0xD0, 1)
    assert info.value.errno == errno.ECONNREFUSED
    assert time.monotonic() - t0 < 5.0
    with I2CBusServer(port=port) as again:
        again.bus("node-1").attach(ADDR, BME280Emulator())
        assert i2c.readfrom_mem(ADDR, 0xD0, 1) == b"\x60"


def test_server_lifecycle():
    srv = I2CBusServer()
    with pytest.raises(RuntimeError):
        srv.address
    srv.start()
    with pytest.raises(RuntimeError):
        srv.start()
    threads = threading.active_count()
    i2c = SocketI2C("127.0.0.1", srv.port, "x")
    i2c.scan()
    srv.stop()
    srv.stop()  # idempotent
    assert threading.active_count() < threads, "connection/accept threads left running"


def test_nack_exception_is_what_devices_raise(server):
    class Shy(Recorder):
        def write_register(self, reg, data):
            raise Nack("busy")

    server.bus("node-1").attach(0x30, Shy())
    i2c = client(server)
    assert i2c.readfrom_mem(0x30, 0x01, 1) == b"\x01"
    with pytest.raises(OSError) as info:
        i2c.writeto_mem(0x30, 0x01, b"\x00")
    assert info.value.errno == errno.ENODEV
