# node.app's supervisor with fakes for the platform, the sensor, the sealer and the link, and the real queue
# on a temporary folder: live messages before the backlog, alarms before readings, pacing, backoff, Wi-Fi
# loss, the watchdog only fed by completed cycles, sensor faults as flags and never as numbers, status.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
import os
import struct

from node import app
from node.alarms import AlarmSet
from node.config import parse
from node.health import IMPLAUSIBLE, READ_ERROR, STUCK, STUCK_SAMPLES, WRONG_CHIP
from node.queue import Queue
from node.store import Counters

_ROOT = "/tmp/fieldnode-test-app-%d" % (id(object()) & 0xFFFFFF)
_BOARD = {"name": "unix", "platform": "unix", "chip": None, "i2c": {"id": 0, "scl": None, "sda": None, "freq": 400000},
          "sensor": {"family": "bme280", "address": 118}, "status_led": None}
ENV = (21.0, 45.0, 101325.0)
_NO_T, _NO_H, _NO_P = -32768, 0xFFFF, 0xFFFFFFFF


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


class Clock:
    def __init__(self):
        self.ms = 1000000

    def __call__(self):
        return self.ms

    def sleep(self, ms):
        self.ms += ms


class FakePlatform:
    def __init__(self):
        self.feeds = 0
        self.net = True
        self.network_attempts = 0
        self.now_fails = False

    def i2c(self):
        return FakeBus()

    def network_up(self):
        return self.net

    def connect_network(self, timeout_ms):
        self.network_attempts += 1
        return self.net

    def sync_time(self):
        return 2

    def now(self):
        if self.now_fails:
            raise RuntimeError("clock broke")
        return 1700000000

    def feed_watchdog(self):
        self.feeds += 1


class FakeBus:
    """The BME280's data registers as the reset probe reads them: stuck or converting."""
    stuck = False

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = b"\x80\x00\x00\x80\x00\x00\x80\x00" if FakeBus.stuck else b"\x65\x5a\xc0\x7e\xed\x00\x66\x3d"


class FakeSensor:
    address = 0x76
    values = ENV
    error = None  # an OSError to raise on read
    opens = 0
    jitter = True  # a real part's noise: no two samples alike

    def __init__(self):
        FakeSensor.opens += 1
        self._n = 0

    def read(self):
        if FakeSensor.error is not None:
            raise FakeSensor.error
        self._n += 1
        t, h, p = FakeSensor.values
        if FakeSensor.jitter:
            t += (self._n % 2) * 0.001
        return (t, h, p)


class FakeSealer:
    """Messages shaped like sealed ones (header as the protocol has it), with the body in the clear."""

    def __init__(self):
        self._buf = bytearray(58)

    def _header(self, type_, boot, seq):
        struct.pack_into(">BBHHI", self._buf, 0, 1, type_, 1, boot, seq)

    def seal_reading(self, boot, seq, ts, tq, t, h, p, bits, status):
        if t is not None and t > 300:
            raise ValueError("temperature does not fit")
        self._header(1, boot, seq)
        struct.pack_into(">IBhHIBB", self._buf, 26, ts, tq, _NO_T if t is None else round(t * 100),
                         _NO_H if h is None else round(h * 100), _NO_P if p is None else round(p * 100), bits,
                         status)
        return memoryview(self._buf)

    def seal_alarm(self, boot, seq, ts, tq, channel, transition, value, limit):
        self._header(2, boot, seq)
        struct.pack_into(">IBBBii", self._buf, 26, ts, tq, channel, transition, round(value * 100),
                         round(limit * 100))
        return memoryview(self._buf)


def opened(payload):
    """(type, seq, temperature, humidity, pressure, status) of a FakeSealer message."""
    type_, seq = payload[1], struct.unpack_from(">I", payload, 6)[0]
    if type_ != 1:
        return type_, seq, None, None, None, None
    _, _, t, h, p, _, status = struct.unpack_from(">IBhHIBB", payload, 26)
    return type_, seq, t, h, p, status


class FakeLink:
    reading_topic = b"fieldnode/n/reading"
    alarm_topic = b"fieldnode/n/alarm"
    status_topic = b"fieldnode/n/status"

    def __init__(self):
        self.reachable = True
        self.fail_after = None  # publishes that still succeed before the link dies
        self.client = None
        self.connects = 0
        self.sent = []  # (topic, bytes) of every acknowledged publish
        self.statuses = []

    @property
    def up(self):
        return self.client is not None

    def connect(self, status):
        self.connects += 1
        if not self.reachable:
            raise OSError(111, "ECONNREFUSED")
        self.client = object()
        self.statuses.append(bytes(status))

    def publish(self, topic, msg, retain=False):
        if self.client is None:
            raise OSError(9, "not connected")
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.client = None
                raise OSError(110, "ETIMEDOUT")
            self.fail_after -= 1
        if topic == self.status_topic:
            self.statuses.append(bytes(msg))
        else:
            self.sent.append((topic, bytes(msg)))

    def ping_due_ms(self):
        return 1 << 30

    def close(self):
        self.client = None

    def seqs(self):
        return [opened(m)[1] for _, m in self.sent]


class FakeNode(app.Node):
    def _make_sensor(self, bus):
        return FakeSensor()


def make(replay=2, thresholds=None, records=1000):
    """A started node on fakes, its queue and counters in a fresh folder; the clock is ours."""
    _rmtree(_ROOT)
    os.mkdir(_ROOT)
    cfg = parse({"node_id": "n", "key_id": 1, "broker": {"host": "h", "retry_min_s": 1, "retry_max_s": 8},
                 "interval_s": 1, "thresholds": thresholds or {}, "queue": {"replay": replay, "records": records},
                 "board": _BOARD})
    FakeSensor.values, FakeSensor.error, FakeSensor.jitter, FakeBus.stuck = ENV, None, True, False
    clock = Clock()
    app.ticks_ms = clock
    app.sleep_ms = clock.sleep
    node = FakeNode(cfg, FakePlatform())
    node.sealer = FakeSealer()
    node.counters = Counters(_ROOT + "/counters.dat")
    node.queue = Queue(_ROOT + "/queue", records, node.counters.floor, node.counters.reserve, lambda *a: None)
    node.alarms = AlarmSet(cfg.thresholds)
    node.link = FakeLink()
    node.time_quality = 2
    return node, clock


def test_a_healthy_cycle_stores_sends_and_feeds():
    node, clock = make()
    assert node.cycle() is True
    assert node.link.seqs() == [1] and node.link.sent[0][0] == FakeLink.reading_topic
    _, _, t, h, p, status = opened(node.link.sent[0][1])
    assert (t, h, p, status) == (2100, 4500, 10132500, 0)
    assert node.queue.count == 0 and node.hal.feeds == 1
    assert node.link.statuses == [b"online"]
    node.queue.close()
    _rmtree(_ROOT)


def test_backlog_is_replayed_after_the_live_reading_paced():
    node, clock = make(replay=2)
    node.link.reachable = False
    for _ in range(5):
        clock.ms += 10000  # past any backoff
        assert node.cycle() is True  # a broker that is away does not make a cycle unhealthy
    assert node.link.sent == [] and node.queue.count == 5 and node.hal.feeds == 5
    node.link.reachable = True
    clock.ms += 10000
    node.cycle()
    assert node.link.seqs() == [6, 1, 2]  # the live reading first, then the oldest stored ones
    node.cycle()
    node.cycle()
    assert node.link.seqs() == [6, 1, 2, 7, 3, 4, 8, 5]
    assert node.queue.count == 0
    node.queue.close()
    _rmtree(_ROOT)


def test_broker_attempts_are_spaced_by_the_backoff():
    node, clock = make()
    node.link.reachable = False
    attempts = []
    for _ in range(80):
        before = node.link.connects
        node.cycle()
        if node.link.connects > before:
            attempts.append((clock.ms, node._broker_retry.wait_ms))
        clock.ms += 250
    assert len(attempts) >= 5 and node.queue.count == 80
    for (t, wait), (t_next, _) in zip(attempts, attempts[1:]):
        assert t_next - t >= wait  # never before the backoff said
        assert t_next - t < wait + 250 + 1  # and at the first cycle after it
    waits = [w for _, w in attempts]
    assert max(waits) <= 8000 and waits[-1] > waits[0]
    node.link.reachable = True
    clock.ms += 8000
    node.cycle()
    assert node.link.up and node._broker_retry.failures == 0  # a connect resets the backoff
    node.queue.close()
    _rmtree(_ROOT)


def test_alarms_go_out_before_the_reading():
    node, clock = make(thresholds={"temperature_c": {"high": 25.0}})
    node.cycle()
    FakeSensor.values = (27.0, 45.0, 101325.0)
    clock.ms += 60000  # slow enough a change to be believed
    node.cycle()
    types = [(opened(m)[0], opened(m)[1]) for _, m in node.link.sent]
    assert types == [(1, 1), (2, 2), (1, 3)]  # alarm (seq 2) sealed, stored and sent before the reading
    assert node.link.sent[1][0] == FakeLink.alarm_topic
    node.queue.close()
    _rmtree(_ROOT)


def test_a_link_that_dies_mid_cycle_keeps_the_rest_queued():
    node, clock = make(replay=5)
    node.link.reachable = False
    for _ in range(4):
        clock.ms += 10000
        node.cycle()
    node.link.reachable = True
    node.link.fail_after = 2  # the live reading and one stored one go through, then the PUBACK never comes
    clock.ms += 10000
    assert node.cycle() is True
    assert node.link.seqs() == [5, 1] and node.queue.waiting() == 3 and not node.link.up
    node.link.fail_after = None
    clock.ms += 10000
    node.cycle()
    assert node.link.seqs() == [5, 1, 6, 2, 3, 4]
    node.queue.close()
    _rmtree(_ROOT)


def test_network_loss_stops_broker_attempts_and_retries_wifi():
    node, clock = make()
    node.cycle()
    node.hal.net = False
    connects = node.link.connects
    for _ in range(6):
        clock.ms += 10000
        assert node.cycle() is True
    assert node.link.connects == connects and not node.link.up  # no broker attempts without a network
    assert node.hal.network_attempts >= 3 and node.queue.count == 6
    node.hal.net = True
    clock.ms += 10000
    node.cycle()
    assert node.link.seqs() == [1, 8, 2, 3] and node.queue.waiting() == 4
    node.queue.close()
    _rmtree(_ROOT)


def test_the_watchdog_is_fed_only_by_completed_cycles():
    node, clock = make()
    assert node.cycle() and node.hal.feeds == 1

    def broken(msg):
        raise OSError(5, "EIO")

    node.queue.append = broken  # flash fails: the cycle is not healthy
    assert node.cycle() is False and node.hal.feeds == 1
    del node.queue.append
    node.hal.now_fails = True  # a bug somewhere in the cycle: run() reports it and goes on, unfed
    node.run(cycles=2)
    assert node.hal.feeds == 1
    node.hal.now_fails = False
    node.run(cycles=1)
    assert node.hal.feeds == 2
    node.queue.close()
    _rmtree(_ROOT)


def _last_reading(node):
    return opened(node.link.sent[-1][1])


def test_read_errors_and_wrong_chip_give_flags_not_numbers_and_recover():
    node, clock = make()
    node.cycle()
    FakeSensor.error = OSError(19, "ENODEV")
    node.cycle()
    assert _last_reading(node)[2:] == (_NO_T, _NO_H, _NO_P, READ_ERROR)
    assert node.link.statuses[-1] == b"online sensor=1"
    FakeSensor.error = None
    node.cycle()
    assert _last_reading(node)[2:] == (2100, 4500, 10132500, 0)
    assert node.link.statuses[-1] == b"online"
    FakeNode._make_sensor = _wrong_chip
    try:
        node.sensor = None
        node.cycle()
        assert _last_reading(node)[2:] == (_NO_T, _NO_H, _NO_P, WRONG_CHIP)
    finally:
        FakeNode._make_sensor = _fake_sensor
    node.cycle()
    assert _last_reading(node)[5] == 0
    node.queue.close()
    _rmtree(_ROOT)


def _wrong_chip(self, bus):
    from node.sensors.bme280 import WrongChipError
    raise WrongChipError(5, "chip id 0x58")


def _fake_sensor(self, bus):
    return FakeSensor()


def test_a_stuck_sensor_is_confirmed_by_a_reset_and_recovers():
    node, clock = make()
    FakeSensor.jitter = False  # identical samples: a steady room, or a stuck ADC
    for _ in range(STUCK_SAMPLES + 1):
        clock.ms += 1000
        node.cycle()
    assert all(opened(m)[5] == 0 for _, m in node.link.sent)  # the probe found a converting part
    opens = FakeSensor.opens
    FakeBus.stuck = True
    for _ in range(STUCK_SAMPLES):
        clock.ms += 1000
        node.cycle()
    assert FakeSensor.opens > opens
    assert _last_reading(node)[2:] == (_NO_T, _NO_H, _NO_P, STUCK)
    assert node.link.statuses[-1] == b"online sensor=4"
    FakeBus.stuck = False
    clock.ms += 1000
    node.cycle()
    assert _last_reading(node)[2:] == (2100, 4500, 10132500, 0)
    node.queue.close()
    _rmtree(_ROOT)


def test_implausible_channels_are_sent_without_a_number():
    node, clock = make()
    node.cycle()
    FakeSensor.values = (95.0, 45.0, 101325.0)  # beyond the sensor's range
    clock.ms += 60000
    node.cycle()
    assert _last_reading(node)[2:] == (_NO_T, 4500, 10132500, IMPLAUSIBLE)
    FakeSensor.values = (21.0, 45.0, 101325.0)
    clock.ms += 60000
    node.cycle()
    assert _last_reading(node)[5] == 0
    node._offsets = (400.0, 0, 0)  # a calibration that pushes the value out of its field
    clock.ms += 60000
    node.cycle()
    assert _last_reading(node)[2:] == (_NO_T, _NO_H, _NO_P, IMPLAUSIBLE)
    node.queue.close()
    _rmtree(_ROOT)


def test_queue_drops_show_on_the_status_topic():
    node, clock = make(records=16)
    node.link.reachable = False
    for _ in range(20):
        clock.ms += 10000
        node.cycle()
    assert node.queue.dropped == 4
    node.link.reachable = True
    clock.ms += 10000
    node.cycle()  # stored before it is sent: the full queue drops one more first
    assert node.link.statuses[-1] == b"online dropped=5"
    assert node.link.seqs() == [21, 6, 7]
    node.queue.close()
    _rmtree(_ROOT)
