# node.hal: importing the ESP32 platform touches no hardware (it must import on the Unix port and CPython),
# load() picks the module by board["platform"], and the ESP32 Platform drives fake machine/network modules
# the way the real ones expect. Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
import sys

HARDWARE = ("machine", "network", "ntptime", "neopixel")
METHODS = ("i2c", "connect_network", "network_up", "sync_time", "now", "start_watchdog", "feed_watchdog",
           "status_led", "reset", "unique_id")
BOARD = {
    "name": "esp32-s3-devkitc-1", "platform": "esp32", "chip": "esp32s3",
    "i2c": {"id": 0, "scl": 9, "sda": 8, "freq": 400000},
    "sensor": {"family": "bme280", "address": 118},
    "status_led": {"kind": "ws2812", "pin": 38},
}


class Cfg:
    node_id = "n1"
    wifi = {"ssid": "plant", "psk": "secret-psk"}


def test_import_touches_no_hardware():
    before = [m for m in HARDWARE if m in sys.modules]
    import node.hal
    import node.hal.esp32

    assert [m for m in HARDWARE if m in sys.modules] == before
    p = node.hal.esp32.Platform(BOARD, Cfg())
    for name in METHODS:
        assert callable(getattr(p, name)), name
    assert [m for m in HARDWARE if m in sys.modules] == before


def test_load_picks_the_platform_module():
    import node.hal
    import node.hal.esp32

    assert node.hal.load(BOARD) is node.hal.esp32.Platform
    assert node.hal.load({"platform": "unix"}).__name__ == "Platform"
    try:
        node.hal.load({"platform": "esp8266"})
    except ValueError as exc:
        assert "esp8266" in str(exc)
    else:
        raise AssertionError("unknown platform accepted")


# ---- fakes of the MicroPython hardware modules ----

class Fake:
    pass


class State:
    def __init__(self):
        self.log = []
        self.connected_after = None  # isconnected() polls until connected; None = never
        self.polls = 0
        self.status = 0
        self.ntp_ok = True
        self.clock = 1000.0  # what time.time() returns
        self.epoch_year = 2000


def fakes(st):
    machine = Fake()

    class Pin:
        OUT = 1

        def __init__(self, n, mode=None):
            self.n = n
            st.log.append(("Pin", n, mode))

        def value(self, v):
            st.log.append(("value", self.n, v))

    class I2C:
        def __init__(self, bus_id, scl=None, sda=None, freq=None):
            st.log.append(("I2C", bus_id, scl.n, sda.n, freq))

    class WDT:
        def __init__(self, timeout=None):
            st.log.append(("WDT", timeout))

        def feed(self):
            st.log.append(("feed",))

    machine.Pin, machine.I2C, machine.WDT = Pin, I2C, WDT
    machine.reset = lambda: st.log.append(("reset",))
    machine.unique_id = lambda: b"\x24\x6f\x28\x01"

    network = Fake()
    network.STA_IF = 0
    network.STAT_CONNECTING = 1001

    class WLAN:
        def __init__(self, iface):
            st.log.append(("WLAN", iface))

        def active(self, on):
            st.log.append(("active", on))

        def isconnected(self):
            st.polls += 1
            return st.connected_after is not None and st.polls > st.connected_after

        def status(self):
            return st.status

        def connect(self, ssid, psk):
            st.log.append(("connect", ssid, psk))

    network.WLAN = WLAN
    network.hostname = lambda name: st.log.append(("hostname", name))

    ntptime = Fake()

    def settime():
        if not st.ntp_ok:
            raise OSError(110)
        st.clock = 800000000.0  # seconds since the port's epoch

    ntptime.settime = settime

    neopixel = Fake()

    class NeoPixel:
        def __init__(self, pin, n):
            st.log.append(("NeoPixel", pin.n, n))
            self.px = [None] * n

        def __setitem__(self, i, rgb):
            self.px[i] = rgb

        def write(self):
            st.log.append(("write", self.px[0]))

    neopixel.NeoPixel = NeoPixel

    clock = Fake()
    clock.time = lambda: st.clock
    clock.gmtime = lambda s: (st.epoch_year, 1, 1, 0, 0, 0, 5, 1)

    def sleep_ms(ms):
        st.log.append(("sleep_ms", ms))
        st.clock += ms / 1000

    clock.sleep_ms = sleep_ms
    return {"machine": machine, "network": network, "ntptime": ntptime, "neopixel": neopixel}, clock


def run_with_fakes(test):
    import node.hal.esp32 as esp32

    st = State()
    modules, clock = fakes(st)
    saved = {name: sys.modules.get(name) for name in modules}
    real_time = esp32.time
    try:
        sys.modules.update(modules)
        esp32.time = clock
        test(esp32, st)
    finally:
        esp32.time = real_time
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def test_i2c_uses_the_board_pins():
    def t(esp32, st):
        esp32.Platform(BOARD, Cfg()).i2c()
        assert ("I2C", 0, 9, 8, 400000) in st.log
    run_with_fakes(t)


def test_connect_network_joins_and_is_bounded():
    def joins(esp32, st):
        st.connected_after = 3
        p = esp32.Platform(BOARD, Cfg())
        assert p.connect_network(5000) is True
        assert ("connect", "plant", "secret-psk") in st.log and ("hostname", "n1") in st.log
        assert p.network_up()
        st.log[:] = []
        assert p.connect_network(5000) is True  # already connected: no new attempt
        assert not [e for e in st.log if e[0] == "connect"]

    def times_out(esp32, st):
        p = esp32.Platform(BOARD, Cfg())
        assert p.connect_network(1000) is False
        assert sum(e[1] for e in st.log if e[0] == "sleep_ms") <= 1000
        assert not p.network_up()

    def attempt_in_flight(esp32, st):
        st.status, st.connected_after = 1001, 1
        assert esp32.Platform(BOARD, Cfg()).connect_network(1000) is True
        assert not [e for e in st.log if e[0] == "connect"]  # waits for the running attempt

    def no_wifi_configured(esp32, st):
        cfg = Cfg()
        cfg.wifi = None
        assert esp32.Platform(BOARD, cfg).connect_network(1000) is False

    for t in (joins, times_out, attempt_in_flight, no_wifi_configured):
        run_with_fakes(t)


def test_time_before_and_after_sync():
    def epoch_2000(esp32, st):
        p = esp32.Platform(BOARD, Cfg())
        st.clock += 42
        assert p.now() == 42  # not synced: seconds since boot
        st.ntp_ok = False
        assert p.sync_time() == 0 and p.now() == 42
        st.ntp_ok = True
        assert p.sync_time() == 1
        assert p.now() == 800000000 + 946684800
        st.ntp_ok = False
        assert p.sync_time() == 1  # the clock still holds NTP time

    def epoch_1970(esp32, st):
        st.epoch_year = 1970
        p = esp32.Platform(BOARD, Cfg())
        assert p.sync_time() == 1 and p.now() == 800000000

    run_with_fakes(epoch_2000)
    run_with_fakes(epoch_1970)


def test_watchdog_led_reset_and_id():
    def t(esp32, st):
        p = esp32.Platform(BOARD, Cfg())
        p.feed_watchdog()  # not started: nothing to feed
        p.start_watchdog(30000)
        p.feed_watchdog()
        assert st.log == [("WDT", 30000), ("feed",)]
        p.status_led(True)
        p.status_led(False)
        assert ("NeoPixel", 38, 1) in st.log
        writes = [e[1] for e in st.log if e[0] == "write"]
        assert writes[-1] == (0, 0, 0) and writes[0] != (0, 0, 0)
        p.reset()
        assert st.log[-1] == ("reset",)
        assert p.unique_id() == b"\x24\x6f\x28\x01"

    def gpio_led(esp32, st):
        board = dict(BOARD, status_led={"kind": "gpio", "pin": 2, "active_high": False})
        p = esp32.Platform(board, Cfg())
        p.status_led(True)
        p.status_led(False)
        assert [e for e in st.log if e[0] == "value"] == [("value", 2, 0), ("value", 2, 1)]

    def no_led(esp32, st):
        esp32.Platform(dict(BOARD, status_led=None), Cfg()).status_led(True)
        assert st.log == []

    for t_ in (t, gpio_led, no_led):
        run_with_fakes(t_)
