"""End to end on the Unix port: node code (SocketI2C + BME280 driver) reads an emulated BME280 in this process.

The node script reads once, prints the reading and waits for a line on stdin before reading again, so the
test changes the environment between two reads without sleeping. A watchdog kills the node after TIMEOUT.
"""
import os
import subprocess
import threading

import pytest

from fieldnode import paths
from fieldnode.bench.bme280_emu import BME280Emulator
from fieldnode.bench.i2cbus import I2CBusServer

TIMEOUT = 30
NODE_SCRIPT = """
import sys
from node.hal.sockbus import SocketI2C
from node.sensors.bme280 import BME280

i2c = SocketI2C("127.0.0.1", {port}, "node-hil", timeout_s={timeout_s})
try:
    sensor = BME280(i2c, 0x76)
except OSError as exc:
    print("ERROR", exc)
    sys.exit(2)
print("CHIP 0x%02x" % sensor.chip_id)
while True:
    print("READING %.5f %.5f %.3f" % sensor.read())
    if sys.stdin.readline().strip() != "again":
        break
"""


class Node:
    def __init__(self, tmp_path, port, timeout_s=5):
        script = tmp_path / "node_bme280.py"
        script.write_text(NODE_SCRIPT.format(port=port, timeout_s=timeout_s))
        env = dict(os.environ, MICROPYPATH=paths.micropypath())
        self.proc = subprocess.Popen([paths.micropython_exe(), str(script)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.watchdog = threading.Timer(TIMEOUT, self.proc.kill)
        self.watchdog.start()
        self.lines = []

    def line(self):
        line = self.proc.stdout.readline()
        assert line, "node exited early:\n" + "".join(self.lines) + self.proc.stdout.read()
        self.lines.append(line)
        return line.split()

    def send(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            out, _ = self.proc.communicate(timeout=TIMEOUT)
        finally:
            self.watchdog.cancel()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return out


@pytest.fixture
def bench():
    with I2CBusServer() as server:
        emu = BME280Emulator(temperature_c=18.75, humidity_rh=52.5, pressure_pa=98765.0)
        server.bus("node-hil").attach(0x76, emu)
        yield server, emu


def assert_reading(fields, env):
    assert fields[0] == "READING", fields
    t, h, p = (float(x) for x in fields[1:])
    assert abs(t - env[0]) <= 0.01 and abs(h - env[1]) <= 0.02 and abs(p - env[2]) <= 0.3, (fields, env)


def test_node_on_unix_port_reads_the_emulated_sensor(tmp_path, bench):
    server, emu = bench
    node = Node(tmp_path, server.port)
    try:
        assert node.line() == ["CHIP", "0x60"]
        assert_reading(node.line(), (18.75, 52.5, 98765.0))
        emu.set_environment(temperature_c=-5.5, humidity_rh=97.0, pressure_pa=61000.0)
        node.send("again")
        assert_reading(node.line(), (-5.5, 97.0, 61000.0))
        node.send("done")
    finally:
        node.close()
    assert node.proc.returncode == 0, "".join(node.lines)
    assert emu.conversions == 2


@pytest.mark.parametrize("fault, expect", [("chip_id", ["0x76", "0x58"]), ("nack", ["ENODEV"])])
def test_node_on_unix_port_sees_sensor_faults(tmp_path, bench, fault, expect):
    server, emu = bench
    if fault == "chip_id":
        emu.chip_id = 0x58
    else:
        emu.nack = True
    node = Node(tmp_path, server.port)
    try:
        fields = node.line()
    finally:
        node.close()
    assert fields[0] == "ERROR" and all(any(e in f for f in fields) for e in expect), fields
    assert node.proc.returncode == 2


def test_node_on_unix_port_times_out_on_a_silent_bus(tmp_path, bench):
    server, emu = bench
    release = threading.Event()

    class Silent:
        def read_register(self, reg, n):
            release.wait(TIMEOUT)
            return emu.read_register(reg, n)

        def write_register(self, reg, data):
            emu.write_register(reg, data)

    server.bus("node-hil").attach(0x76, Silent())
    node = Node(tmp_path, server.port, timeout_s=0.5)
    try:
        fields = node.line()
    finally:
        release.set()
        node.close()
    assert fields[0] == "ERROR" and "ETIMEDOUT" in " ".join(fields), fields
