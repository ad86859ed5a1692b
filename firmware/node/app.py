# The node's supervisor, one cycle per interval:
#   read the sensor and judge the sample (node/health) -> thresholds (node/alarms) -> seal (node/seal) ->
#   store on flash (node/queue) -> publish what the link can carry, alarms first, then the reading ->
#   replay up to queue.replay stored messages, oldest first -> commit the queue -> report status changes.
# Between cycles it keeps the link alive (PINGREQ after keepalive/2 of silence). The broker and the Wi-Fi
# are retried with exponential backoff and jitter; while either is down every message just waits on flash.
# The watchdog is fed at the end of a cycle that completed with everything it made on flash, never
# elsewhere: a hung or failing loop resets the board.
#
# Status topic (docs/protocol.md): "online", followed by " sensor=<bits>" while the sensor is faulty,
# " dropped=<n>" once the full queue dropped messages and " lost=<n>" once records were lost on flash.
#
# Memory (docs/performance.md): the config parser is the largest module and is needed once, so boot()
# unloads it after reading the config; the rest is imported as it is needed and stays.
import sys

from node.health import (IMPLAUSIBLE, READ_ERROR, STUCK, STUCK_SAMPLES, WRONG_CHIP, Health, conversion_stuck,
                         describe)
from node.timing import Backoff, sleep_ms, ticks_add, ticks_diff, ticks_ms

CHANNELS = ("temperature_c", "humidity_rh", "pressure_pa")
_TYPE_ALARM = 2  # the message type byte (docs/protocol.md)


def log(*parts):
    print("fieldnode:", *parts)


class Node:
    def __init__(self, cfg, platform):
        self.cfg = cfg
        self.hal = platform
        self.sensor = None
        self.fault = 0  # READ_ERROR, WRONG_CHIP or STUCK from the last read, else 0
        self.sensor_status = 0  # what the last reading carried
        self.time_quality = 0
        self.health = Health()
        self._bus = None
        self._adc = bytearray(8)
        self._values = [None, None, None]
        self._offsets = tuple(cfg.calibration.get(c, 0) for c in CHANNELS)
        b = cfg.broker
        self._broker_retry = Backoff(int(b["retry_min_s"] * 1000), int(b["retry_max_s"] * 1000))
        self._wifi_retry = Backoff(int(b["retry_min_s"] * 1000), int(b["retry_max_s"] * 1000))
        self._replay = cfg.queue["replay"]
        self._net_up = True
        self._status_sent = None
        self._healthy = True
        self._attempted = False

    def watchdog_ms(self):
        """Long enough for the slowest healthy cycle: a connect attempt and a publish that time out."""
        return int(max(30, 3 * self.cfg.interval_s, 8 * self.cfg.broker["timeout_s"]) * 1000)

    def start(self):
        from node.alarms import AlarmSet
        from node.link import Link
        from node.queue import Queue
        from node.seal import Sealer
        from node.store import Counters

        cfg = self.cfg
        with open(cfg.files["payload_key"], "rb") as f:
            key = f.read()
        self.sealer = Sealer(key, cfg.key_id, cfg.node_id)
        self.counters = Counters()
        self.queue = Queue("queue", cfg.queue["records"], self.counters.floor, self.counters.reserve, log)
        self.alarms = AlarmSet(cfg.thresholds)
        self.link = Link(cfg)
        self.link.prepare()  # the TLS context while the heap is in one piece (docs/performance.md)
        self.hal.start_watchdog(self.watchdog_ms())
        self._net_up = self.hal.connect_network(15000)
        self.time_quality = self.hal.sync_time()
        log("node", cfg.node_id, "boot", self.counters.boot, "started, next seq", self.queue.next_seq)

    # -- the sensor -------------------------------------------------------------------------------------

    def _make_sensor(self, bus):
        from node.sensors.bme280 import BME280

        s = self.cfg.sensor
        return BME280(bus, s["address"], osrs_t=s["osrs_t"], osrs_h=s["osrs_h"], osrs_p=s["osrs_p"],
                      iir=s["iir"])

    def _open_sensor(self):
        """(Re)open the sensor: chip id check and soft reset. False (fault set) if that failed."""
        from node.sensors.bme280 import WrongChipError

        self.sensor = None
        try:
            if self._bus is None:
                self._bus = self.hal.i2c()
            self.sensor = self._make_sensor(self._bus)
        except OSError as exc:
            self._set_fault(WRONG_CHIP if isinstance(exc, WrongChipError) else READ_ERROR, exc)
            if not isinstance(exc, WrongChipError):
                self._drop_bus()  # a fresh bus next time (re-initialises it after an error)
            return False
        self.health.reset()
        return True

    def _convert(self):
        try:
            return self.sensor.read()
        except OSError as exc:
            self.sensor = None
            self._drop_bus()
            self._set_fault(READ_ERROR, exc)
            return None

    def _set_fault(self, fault, why=None):
        if fault and fault != self.fault:
            log("sensor fault: %s (%s)" % (describe(fault), why))
        self.fault = fault

    def _drop_bus(self):
        bus, self._bus = self._bus, None
        close = getattr(bus, "close", None)  # the bench's socket bus; machine.I2C has nothing to close
        if close is not None:
            try:
                close()
            except OSError:
                pass

    def read(self):
        """(t, h, p) as the sensor measured them, or None with `fault` saying why."""
        fresh = self.sensor is None
        if fresh and not self._open_sensor():
            return None
        values = self._convert()
        if values is None:
            return None
        if not fresh and self.health.repeats(values) >= STUCK_SAMPLES:
            # The very same raw sample again and again: a working part always shows some noise. Reset it
            # and convert once more; the check below tells a stuck ADC from a steady room.
            if not self._open_sensor():
                return None
            values = self._convert()
            if values is None:
                return None
            fresh = True
        if fresh:
            try:
                stuck = conversion_stuck(self._bus, self.sensor.address, self._adc)
            except OSError as exc:
                self.sensor = None
                self._drop_bus()
                self._set_fault(READ_ERROR, exc)
                return None
            if stuck:
                self.sensor = None  # reset and probe again next cycle
                self._set_fault(STUCK, "a conversion after a reset left the data registers unchanged")
                return None
            self.health.repeats(values)
        self._set_fault(0)
        return values

    def sample(self):
        """One reading: (three values with None where not valid, calibrated; sensor_status bits)."""
        out = self._values
        raw = self.read()
        if raw is None:
            out[0] = out[1] = out[2] = None
            status = self.fault
        else:
            status = self.health.judge(raw, ticks_ms(), out)
            o = self._offsets
            for c in range(3):
                if o[c] and out[c] is not None:
                    out[c] += o[c]
        if status != self.sensor_status:
            log("sensor status %d: %s" % (status, describe(status)))
            self.sensor_status = status
        return out, status

    # -- the link ---------------------------------------------------------------------------------------

    def status_text(self):
        q = self.queue
        if not (self.sensor_status or q.dropped or q.lost):
            return "online"
        text = "online"
        if self.sensor_status:
            text += " sensor=%d" % self.sensor_status
        if q.dropped:
            text += " dropped=%d" % q.dropped
        if q.lost:
            text += " lost=%d" % q.lost
        return text

    def _network_ready(self, now):
        if self.hal.network_up():
            if not self._net_up:
                self._net_up = True
                self._wifi_retry.reset()
                log("network up")
                if not self.time_quality:
                    self.time_quality = self.hal.sync_time()
            return True
        if self._net_up:
            self._net_up = False
            self.link.close()
            log("network down: messages wait on flash")
        if self._wifi_retry.due(now):
            self._wifi_retry.failed(now)  # schedules the next attempt; network_up() tells when one worked
            self.hal.connect_network(0)  # start an attempt; the driver carries on in the background
        return False

    def _link_ready(self):
        now = ticks_ms()
        if not self._network_ready(now):
            return False
        if self.link.up:
            return True
        if self._attempted or not self._broker_retry.due(now):
            return False
        self._attempted = True  # one attempt per cycle: a blackholed broker costs one timeout, not several
        status = self.status_text()
        try:
            self.link.connect(status.encode())
        except Exception as exc:  # DNS, refused, TLS, timeout, MQTT refusal: all mean "not now"
            self._broker_retry.failed(now)
            log("broker unreachable (%s): %d queued, next try in %d ms"
                % (exc, self.queue.waiting(), self._broker_retry.wait_ms))
            return False
        self._broker_retry.reset()  # a link that breaks after this is retried quickly again
        self._status_sent = status
        b = self.cfg.broker
        log("connected to %s:%d, %d queued" % (b["host"], b["port"], self.queue.waiting()))
        return True

    def _publish(self, topic, msg, seq):
        try:
            self.link.publish(topic, msg)
        except Exception as exc:
            self._broker_retry.failed(ticks_ms())
            log("publish of seq %d failed (%s): it stays queued" % (seq, exc))
            return False
        self.queue.ack(seq)
        self._broker_retry.reset()
        return True

    def _keep(self, msg, topic):
        """Store a sealed message on flash, then send it if the link is up (it stays queued until the broker
        acknowledged it)."""
        try:
            seq = self.queue.append(msg)
        except Exception as exc:  # QueueError (flash full or failing), OSError
            self._healthy = False
            log("queue write failed:", exc)
            return
        if self._link_ready():
            self._publish(topic, msg, seq)

    def _replay_backlog(self):
        link, queue = self.link, self.queue
        for _ in range(self._replay):
            if not self._link_ready():
                return
            msg = queue.peek()
            if msg is None:
                return
            topic = link.alarm_topic if msg[1] == _TYPE_ALARM else link.reading_topic
            if not self._publish(topic, msg, queue.peek_seq):
                return

    def _report_status(self):
        text = self.status_text()
        if text == self._status_sent or not self.link.up:
            return
        try:
            self.link.publish(self.link.status_topic, text.encode(), True)
        except Exception as exc:
            log("status publish failed (%s)" % exc)
            self._broker_retry.failed(ticks_ms())
            return
        self._status_sent = text

    # -- the loop ---------------------------------------------------------------------------------------

    def cycle(self):
        """One cycle. Returns True, and feeds the watchdog, when it completed with every message it made on
        flash (a broker or network that is down does not make a cycle unhealthy; a queue that cannot
        write does)."""
        self._healthy = True
        self._attempted = False
        values, status = self.sample()
        events = self.alarms.update(values)
        ts = self.hal.now()
        tq = self.time_quality
        boot = self.counters.boot
        seal = self.sealer
        for channel, transition, value, limit in events:
            try:
                msg = seal.seal_alarm(boot, self.queue.next_seq, ts, tq, channel, transition, value, limit)
            except ValueError as exc:
                log("alarm not sealed:", exc)
                continue
            self._keep(msg, self.link.alarm_topic)
        t, h, p = values
        try:
            msg = seal.seal_reading(boot, self.queue.next_seq, ts, tq, t, h, p, self.alarms.bits, status)
        except ValueError as exc:  # a calibrated value that does not fit its field: no number, flagged
            log("reading value refused:", exc)
            msg = seal.seal_reading(boot, self.queue.next_seq, ts, tq, None, None, None, self.alarms.bits,
                                    status | IMPLAUSIBLE)
        self._keep(msg, self.link.reading_topic)
        try:
            self._replay_backlog()
            self.queue.commit()
        except OSError as exc:
            self._healthy = False
            log("queue error:", exc)
        self._report_status()
        if self._healthy:
            self.hal.feed_watchdog()
        return self._healthy

    def _idle(self, deadline):
        """Wait until `deadline` (ticks), keeping the link alive."""
        while True:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                return
            if self.link.up:
                due = self.link.ping_due_ms()
                if due <= 0:
                    try:
                        self.link.ping()
                    except Exception as exc:
                        self._broker_retry.failed(ticks_ms())
                        log("keepalive failed (%s): link down" % exc)
                    continue
                if due < left:
                    left = due
            (getattr(self.hal, "sleep_ms", None) or sleep_ms)(left)  # the platform's, if it has one

    def run(self, cycles=None):
        period = int(self.cfg.interval_s * 1000)
        deadline = ticks_ms()
        n = 0
        while cycles is None or n < cycles:
            try:
                self.cycle()
            except Exception as exc:  # a bug or a failing part: report it, do not feed the watchdog, go on
                log("cycle failed: %r" % (exc,))
            n += 1
            deadline = ticks_add(deadline, period)
            self._idle(deadline)
            if ticks_diff(deadline, ticks_ms()) < 0:
                deadline = ticks_ms()  # overran: do not try to catch up in a burst


def run(path="config.json", cycles=None):
    """Entry point from main.py. A bad config leaves the board at the REPL instead of a crash loop."""
    node = boot(path)
    if node is not None:
        node.run(cycles)
    return node


def boot(path="config.json"):
    """Read the config, make the Node and start it (no cycle yet); None, logged, when the config is bad or the
    start fails."""
    cfg = load_config(path)
    if cfg is None:
        return None
    from node import hal

    node = Node(cfg, hal.load(cfg.board)(cfg.board, cfg))
    try:
        node.start()
    except Exception as exc:  # a missing key file, a corrupt counters.dat: report and stay reachable
        log("start failed:", exc)
        return None
    _gc_every_quarter_heap()
    return node


def _gc_every_quarter_heap():
    # Collect after a quarter of the free heap has been allocated rather than when it runs out. A cycle leaves
    # little garbage, and MicroPython looks for room for a multi-block object by scanning from the first free
    # block up: the further allocation has moved on since the last collection, the longer each scan. Measured
    # (docs/performance.md): a quarter of a 512 KiB heap halves the node's instructions per cycle.
    import gc

    gc.collect()
    try:
        gc.threshold(max(8192, gc.mem_free() // 4))
    except AttributeError:  # a port built without it
        pass


class Settings:
    """The fields of a node.config.Config, without its class: nothing here refers to the parser's module."""

    def __init__(self, cfg):
        for name, value in cfg.__dict__.items():
            setattr(self, name, value)


def load_config(path="config.json"):
    """The config as Settings, or None (logged) if it is bad. The parser (node.config) is unloaded afterwards:
    its code would otherwise stay on the heap for good, a fifth of the node's."""
    from node import config as mod

    try:
        cfg = Settings(mod.load(path))
    except mod.ConfigError as exc:
        log("config error:", exc)
        log("node halted: fix the config (fieldnode provision) and reset")
        cfg = None
    _unload("node.config")
    return cfg


def _unload(name):
    """Forget a module (sys.modules and its package's attribute) so the collector can free its code; a later
    import loads it again."""
    sys.modules.pop(name, None)
    package, _, attr = name.rpartition(".")
    parent = sys.modules.get(package)
    if parent is not None and attr in parent.__dict__:
        delattr(parent, attr)
