# The node's supervisor: read the sensor, check thresholds, seal, publish; one cycle per interval.
import time

from node import config as config_mod

# sensor_status bits (docs/protocol.md)
READ_ERROR = 1
WRONG_CHIP = 2

CHANNELS = ("temperature_c", "humidity_rh", "pressure_pa")


def log(*parts):
    print("fieldnode:", *parts)


class Node:
    def __init__(self, cfg, platform):
        self.cfg = cfg
        self.hal = platform
        self.sensor = None
        self.sensor_status = 0
        self.time_quality = 0
        self._next_connect = 0
        self._backoff_ms = 1000
        self._offsets = tuple(cfg.calibration.get(c, 0) for c in CHANNELS)

    def start(self):
        from node.alarms import AlarmSet
        from node.link import Link
        from node.seal import Sealer
        from node.store import Counters

        cfg = self.cfg
        with open(cfg.files["payload_key"], "rb") as f:
            key = f.read()
        self.sealer = Sealer(key, cfg.key_id, cfg.node_id)
        self.counters = Counters()
        self.alarms = AlarmSet(cfg.thresholds)
        self.link = Link(cfg)
        self.hal.start_watchdog(max(30000, int(cfg.interval_s * 3000)))
        self.hal.connect_network(15000)
        self.time_quality = self.hal.sync_time()
        log("node", cfg.node_id, "boot", self.counters.boot, "started")

    def _open_sensor(self):
        from node.sensors.bme280 import BME280, WrongChipError

        s = self.cfg.sensor
        try:
            self.sensor = BME280(self.hal.i2c(), s["address"], osrs_t=s["osrs_t"], osrs_h=s["osrs_h"],
                                 osrs_p=s["osrs_p"], iir=s["iir"])
            self.sensor_status = 0
            log("sensor ready at", hex(s["address"]))
        except OSError as exc:
            self.sensor = None
            self.sensor_status = WRONG_CHIP if isinstance(exc, WrongChipError) else READ_ERROR
            log("sensor error:", exc)

    def read(self):
        """(t, h, p) with calibration offsets applied, or None when the sensor gave no valid sample."""
        if self.sensor is None:
            self._open_sensor()
            if self.sensor is None:
                return None
        try:
            t, h, p = self.sensor.read()
        except OSError as exc:
            log("sensor read error:", exc)
            self.sensor = None
            self.sensor_status = READ_ERROR
            return None
        o = self._offsets
        return (t + o[0], h + o[1], p + o[2])

    def _ensure_link(self):
        if self.link.up:
            return True
        now = time.ticks_ms()
        if time.ticks_diff(now, self._next_connect) < 0:
            return False
        try:
            self.link.connect()
        except Exception as exc:  # TLS, DNS, refused, MQTT error: all mean "not now, try later"
            self._next_connect = time.ticks_add(now, self._backoff_ms)
            self._backoff_ms = min(self._backoff_ms * 2, 60000)
            log("broker unreachable:", exc)
            return False
        self._backoff_ms = 1000
        b = self.cfg.broker
        log("connected to", b["host"], b["port"])
        return True

    def _send(self, topic, msg):
        if not self._ensure_link():
            return False
        try:
            self.link.publish(topic, msg)
            return True
        except Exception as exc:
            log("publish failed:", exc)
            return False

    def cycle(self):
        values = self.read()
        events = self.alarms.update(values if values else (None, None, None))
        ts = self.hal.now()
        tq = self.time_quality
        boot = self.counters.boot
        for channel, transition, value, limit in events:
            msg = self.sealer.seal_alarm(boot, self.counters.next_seq(), ts, tq, channel, transition, value, limit)
            self._send(self.link.alarm_topic, msg)
        if values:
            t, h, p = values
        else:
            t = h = p = None
        msg = self.sealer.seal_reading(boot, self.counters.next_seq(), ts, tq, t, h, p,
                                       self.alarms.bits, self.sensor_status)
        self._send(self.link.reading_topic, msg)
        self.hal.feed_watchdog()

    def run(self, cycles=None):
        period = int(self.cfg.interval_s * 1000)
        deadline = time.ticks_ms()
        n = 0
        while cycles is None or n < cycles:
            self.cycle()
            n += 1
            deadline = time.ticks_add(deadline, period)
            wait = time.ticks_diff(deadline, time.ticks_ms())
            if wait > 0:
                time.sleep_ms(wait)
            else:
                deadline = time.ticks_ms()  # overran: do not try to catch up in a burst


def run(path="config.json", cycles=None):
    """Entry point from main.py. A bad config leaves the board at the REPL instead of a crash loop."""
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        log("config error:", exc)
        log("node halted: fix the config (fieldnode provision) and reset")
        return None
    from node import hal

    node = Node(cfg, hal.load(cfg.board)(cfg.board, cfg))
    try:
        node.start()
    except Exception as exc:  # a missing key file etc.: report and stay reachable
        log("start failed:", exc)
        return None
    node.run(cycles)
    return node
