# The ESP32 Wi-Fi loss path with a fake `network` module: connect_network(0) starts an attempt and returns
# at once (the supervisor's backoff calls it while messages wait on flash), leaves an attempt that is under
# way alone, and network_up() follows the driver. Plain asserts: runs under pytest (CPython) and on the
# Unix port (mpyunit.py).
import sys

BOARD = {"name": "esp32-devkitc", "platform": "esp32", "chip": "esp32",
         "i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 400000},
         "sensor": {"family": "bme280", "address": 118}, "status_led": None}


class Cfg:
    node_id = "n1"
    wifi = {"ssid": "plant", "psk": "secret-psk"}


class FakeWLAN:
    def __init__(self):
        self.connected = False
        self.state = 0  # STAT_IDLE
        self.connects = []
        self.is_active = False

    def active(self, on=None):
        if on is not None:
            self.is_active = on
        return self.is_active

    def isconnected(self):
        return self.connected

    def status(self):
        return self.state

    def connect(self, ssid, psk):
        self.connects.append(ssid)
        self.state = FakeNetwork.STAT_CONNECTING


class FakeNetwork:
    STA_IF = 0
    STAT_CONNECTING = 1001
    wlan = None

    @staticmethod
    def WLAN(iface):
        return FakeNetwork.wlan

    @staticmethod
    def hostname(name):
        pass


def platform():
    FakeNetwork.wlan = FakeWLAN()
    sys.modules["network"] = FakeNetwork
    from node.hal.esp32 import Platform

    return Platform(BOARD, Cfg()), FakeNetwork.wlan


def test_an_attempt_is_started_and_not_waited_for():
    try:
        p, wlan = platform()
        assert p.connect_network(0) is False
        assert wlan.connects == ["plant"] and wlan.is_active
        assert p.connect_network(0) is False  # under way: left alone, not restarted
        assert wlan.connects == ["plant"]
        wlan.state = 201  # e.g. STAT_NO_AP_FOUND: the attempt ended, a new one starts
        p.connect_network(0)
        assert wlan.connects == ["plant", "plant"]
    finally:
        del sys.modules["network"]


def test_network_up_follows_the_driver():
    try:
        p, wlan = platform()
        assert not p.network_up()
        wlan.connected = True
        assert p.network_up() and p.connect_network(0) is True
        assert wlan.connects == []  # connected already: nothing to do
        wlan.connected = False  # the access point went away
        assert not p.network_up()
    finally:
        del sys.modules["network"]
