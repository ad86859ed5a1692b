"""Load and validate the node's JSON config (written by `fieldnode provision`). No hardware, no network.

`load(path)` reads the file, `parse(data)` checks a dict; both return a `Config` or raise `ConfigError`,
whose message is one line naming the field and what is wrong with it. Unknown fields are errors (a typo in
a limit must not silently disable an alarm). `Config.as_dict()` gives the data back with defaults filled in.

| field                   | type / rule                                              | default        |
|-------------------------|----------------------------------------------------------|----------------|
| node_id                 | 1-32 chars of A-Z a-z 0-9 _ -  (MQTT client id, cert CN) | required       |
| key_id                  | int 0-65535, id of the payload master key                | required       |
| broker.host             | non-empty string                                         | required       |
| broker.port             | int 1-65535                                              | 8883           |
| broker.keepalive_s      | int 0-65535 (0 = no keepalive)                           | 60             |
| broker.server_name      | name the broker's certificate carries, if not host       | absent (host)  |
| broker.timeout_s        | number 0.1-60: bound on every network wait (connect, TLS | 5              |
|                         | handshake, CONNACK, PUBACK, PINGRESP)                    |                |
| broker.retry_min_s,     | numbers 0.1-3600, min <= max: reconnect backoff, doubled | 1, 60          |
|   .retry_max_s          | after each failure up to max, with jitter                |                |
| interval_s              | number 0.05-86400, seconds between readings              | 10             |
| thresholds.<channel>    | {low, high, hysteresis, debounce}, channel one of        | {} (no alarms) |
|                         | temperature_c, humidity_rh, pressure_pa                  |                |
|   .low, .high           | number within the sensor's range (RANGES) or null; low < | none (never)   |
|                         | high when both are given                                 |                |
|   .hysteresis           | number >= 0, and < high - low when both are given        | 0              |
|   .debounce             | int 1-255, consecutive samples before raise / clear      | 1              |
| calibration.<channel>   | offset added to the reading: at most ±20 °C, ±20 %RH,    | 0              |
|                         | ±5000 Pa                                                 |                |
| sensor.address          | int 0x08-0x77                                            | board.sensor's |
| sensor.osrs_t/_h/_p     | oversampling as a sample count: 1, 2, 4, 8 or 16         | 2 / 1 / 16     |
| sensor.iir              | IIR filter coefficient: 0 (off), 2, 4, 8 or 16           | 0              |
| files.ca/cert/key       | file names of the DER TLS material                       | ca.der,        |
|                         |                                                          | node.der,      |
|                         |                                                          | node.key.der   |
| files.payload_key       | file name of the 32-byte payload master key              | payload.key    |
| board                   | the board data object (boards/<name>.json); the firmware | required       |
|                         | checks name, platform, i2c, sensor, status_led           |                |
| wifi.ssid, wifi.psk     | ssid 1-32 bytes; psk "" (open), 8-63 chars or 64 hex     | required on    |
|                         |                                                          | esp32 boards   |
| bench.i2c, bench.bus    | "HOST:PORT" and a bus name of the emulated sensor bus;   | absent         |
|                         | only with a unix board                                   |                |
| queue.records           | int 16-1000000: messages kept on flash until the broker  | 4096           |
|                         | acknowledged them (~64 bytes each); when full the oldest |                |
|                         | is dropped, counted and reported                         |                |
| queue.replay            | int 1-1000: stored messages re-sent per cycle after the  | 10             |
|                         | live ones                                                |                |

`Config` has one attribute per top-level field. Sections are plain dicts with every default filled in:
broker, sensor, files, calibration (all three channels), queue, board (as given), wifi and bench (None if
absent).
thresholds holds only the configured channels, each {"low"?, "high"?, "hysteresis", "debounce"} without the
limits that are not set: what `node.alarms.AlarmSet` takes.
"""
import errno
import json

# Channel order of the protocol (0 temperature, 1 humidity, 2 pressure); kept here too so the host can load
# this file on its own (fieldnode.nodeconfig) without the rest of the firmware.
CHANNELS = ("temperature_c", "humidity_rh", "pressure_pa")
OVERSAMPLING = (1, 2, 4, 8, 16)
IIR = (0, 2, 4, 8, 16)
PLATFORMS = ("esp32", "unix")
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_HEX = "0123456789abcdefABCDEF"
_NODE_ID = "1-32 characters of A-Z a-z 0-9 _ -"
_MAX_SIZE = 16384  # characters; a provisioned config is about 1 KB
# What the BME280 can measure (datasheet operating range), per channel; limits outside it never trigger.
RANGES = {"temperature_c": (-40, 85), "humidity_rh": (0, 100), "pressure_pa": (30000, 110000)}
CALIBRATION_BOUNDS = (20, 20, 5000)  # largest offset accepted: °C, %RH, Pa
_TOP = ("node_id", "key_id", "broker", "interval_s", "thresholds", "calibration", "sensor", "files", "queue",
        "board", "wifi", "bench")


class ConfigError(Exception):
    pass


class Config:
    """The validated config: one attribute per top-level field; sections are plain dicts, defaults filled in."""

    def as_dict(self):
        d = {k: getattr(self, k) for k in _TOP}
        for k in ("wifi", "bench"):
            if d[k] is None:
                del d[k]
        return d


def load(path="config.json"):
    try:
        f = open(path)
    except OSError as exc:
        if exc.args and exc.args[0] == errno.ENOENT:
            raise ConfigError("%s not found: provision the node with `fieldnode provision`" % path)
        raise ConfigError("%s: cannot be read (%s)" % (path, exc))
    try:
        with f:
            text = f.read(_MAX_SIZE + 1)  # a bounded read: a huge file must not exhaust a board's heap
        if len(text) > _MAX_SIZE:
            raise ConfigError("%s: larger than %d characters, not a config file: provision the node again"
                              % (path, _MAX_SIZE))
        data = json.loads(text)
    except ValueError as exc:  # CPython's JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise ConfigError("%s: not valid JSON (%s)" % (path, str(exc) or type(exc).__name__))
    except (RuntimeError, MemoryError):  # nested too deeply (RecursionError is a RuntimeError), too big
        raise ConfigError("%s: not valid JSON (nested too deeply or too large)" % path)
    return parse(data, path)


def parse(data, source="config.json"):
    """Validate a config dict; `source` names the file in error messages."""
    v = _Validator(source)
    v.keys(data, "", _TOP)
    c = Config()

    node_id = v.required(data, "node_id", _NODE_ID)
    if not (isinstance(node_id, str) and 1 <= len(node_id) <= 32 and all(ch in _ID_CHARS for ch in node_id)):
        v.fail("node_id", _NODE_ID, node_id)
    c.node_id = node_id
    c.key_id = v.integer(data, "key_id", 0, 65535, None)

    broker = v.section(data, "broker", ("host", "port", "keepalive_s", "server_name", "timeout_s", "retry_min_s",
                                        "retry_max_s"), required=True)
    c.broker = {
        "host": v.text(broker, "broker.host", "a host name or IP address"),
        "port": v.integer(broker, "broker.port", 1, 65535, 8883),
        "keepalive_s": v.integer(broker, "broker.keepalive_s", 0, 65535, 60),
        "timeout_s": v.bounded(broker, "broker.timeout_s", 0.1, 60, 5),
        "retry_min_s": v.bounded(broker, "broker.retry_min_s", 0.1, 3600, 1),
        "retry_max_s": v.bounded(broker, "broker.retry_max_s", 0.1, 3600, 60),
    }
    if c.broker["retry_min_s"] > c.broker["retry_max_s"]:
        v.fail("broker.retry_max_s", "at least broker.retry_min_s (%r)" % c.broker["retry_min_s"],
               c.broker["retry_max_s"])
    if "server_name" in broker:
        c.broker["server_name"] = v.text(broker, "broker.server_name", "the name on the broker's certificate")

    c.interval_s = v.bounded(data, "interval_s", 0.05, 86400, 10)

    thresholds = v.section(data, "thresholds", CHANNELS)
    c.thresholds = {}
    for name in CHANNELS:
        if name in thresholds:
            c.thresholds[name] = v.limits(thresholds, "thresholds." + name, RANGES[name])

    calibration = v.section(data, "calibration", CHANNELS)
    # Offsets correct a sensor, they do not move it to another range: bounded so a calibrated value
    # always fits the wire format (docs/protocol.md).
    c.calibration = {name: v.bounded(calibration, "calibration." + name, -bound, bound, 0)
                     for name, bound in zip(CHANNELS, CALIBRATION_BOUNDS)}

    c.board = v.board(data.get("board"))
    platform = c.board["platform"]

    sensor = v.section(data, "sensor", ("address", "osrs_t", "osrs_h", "osrs_p", "iir"))
    c.sensor = {
        "address": v.integer(sensor, "sensor.address", 0x08, 0x77, c.board["sensor"]["address"],
                             "an I2C address 0x08-0x77"),
        "osrs_t": v.choice(sensor, "sensor.osrs_t", OVERSAMPLING, 2),
        "osrs_h": v.choice(sensor, "sensor.osrs_h", OVERSAMPLING, 1),
        "osrs_p": v.choice(sensor, "sensor.osrs_p", OVERSAMPLING, 16),
        "iir": v.choice(sensor, "sensor.iir", IIR, 0),
    }

    files = v.section(data, "files", ("ca", "cert", "key", "payload_key"))
    c.files = {k: v.name(files, "files." + k, default)
               for k, default in (("ca", "ca.der"), ("cert", "node.der"), ("key", "node.key.der"),
                                  ("payload_key", "payload.key"))}

    queue = v.section(data, "queue", ("records", "replay"))
    c.queue = {
        "records": v.integer(queue, "queue.records", 16, 1000000, 4096),
        "replay": v.integer(queue, "queue.replay", 1, 1000, 10),
    }

    c.wifi = None
    if "wifi" in data:
        c.wifi = v.wifi(v.section(data, "wifi", ("ssid", "psk")))
    elif platform == "esp32":
        v.fail("wifi", "{\"ssid\": ..., \"psk\": ...} on an esp32 board", None, missing=True)

    c.bench = None
    if "bench" in data:
        if platform != "unix":
            raise ConfigError("%s: bench is only for the unix board (board.platform is %r)" % (source, platform))
        c.bench = v.bench(v.section(data, "bench", ("i2c", "bus")))
    return c


class _Validator:
    def __init__(self, source):
        self.source = source

    def fail(self, field, what, got, missing=False):
        if missing:
            raise ConfigError("%s: %s is missing (expected %s)" % (self.source, field, what))
        # Show the value as it is spelled in the JSON file.
        if isinstance(got, (list, dict)):  # never repr a container: it may be huge or nested very deeply
            shown = "a JSON array" if isinstance(got, list) else "a JSON object"
        else:
            shown = "null" if got is None else ("true" if got else "false") if isinstance(got, bool) else repr(got)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise ConfigError("%s: %s must be %s (got %s)" % (self.source, field, what, shown))

    def keys(self, d, prefix, known):
        if not isinstance(d, dict):
            self.fail(prefix[:-1] or "the config", "a JSON object", d)
        for k in d:
            if k not in known:
                raise ConfigError("%s: %s%s is not a known field (expected one of: %s)"
                                  % (self.source, prefix, k, ", ".join(known)))

    def section(self, d, field, known, required=False):
        key = field.split(".")[-1]
        if key not in d:
            if required:
                self.fail(field, "a JSON object", None, missing=True)
            return {}
        value = d[key]
        self.keys(value, field + ".", known)
        return value

    def required(self, d, field, what):
        key = field.split(".")[-1]
        if key not in d:
            self.fail(field, what, None, missing=True)
        return d[key]

    def text(self, d, field, what, default=None):
        key = field.split(".")[-1]
        if key not in d and default is not None:
            return default
        value = self.required(d, field, what)
        if not (isinstance(value, str) and value):
            self.fail(field, what, value)
        return value

    def integer(self, d, field, lo, hi, default, what=None):
        key = field.split(".")[-1]
        if key not in d and default is not None:
            return default
        value = self.required(d, field, what or "an integer %d-%d" % (lo, hi))
        if not (_is_int(value) and lo <= value <= hi):
            self.fail(field, what or "an integer %d-%d" % (lo, hi), value)
        return value

    def number(self, d, field, default):
        key = field.split(".")[-1]
        if key not in d:
            return default
        value = d[key]
        if not _is_number(value):
            self.fail(field, "a number", value)
        return value

    def bounded(self, d, field, lo, hi, default):
        value = self.number(d, field, default)
        if not lo <= value <= hi:
            self.fail(field, "a number %r-%r" % (lo, hi), value)
        return value

    def choice(self, d, field, allowed, default):
        key = field.split(".")[-1]
        value = d.get(key, default)
        if not (_is_int(value) and value in allowed):
            self.fail(field, "one of " + ", ".join(str(a) for a in allowed), value)
        return value

    def name(self, d, field, default):
        value = d.get(field.split(".")[-1], default)
        if not (isinstance(value, str) and value and "/" not in value):
            self.fail(field, "a file name (no directory)", value)
        return value

    def limits(self, d, field, valid):
        spec = d[field.split(".")[-1]]
        self.keys(spec, field + ".", ("low", "high", "hysteresis", "debounce"))
        out = {}
        for k in ("low", "high"):
            if spec.get(k) is not None:
                out[k] = self.bounded(spec, field + "." + k, valid[0], valid[1], None)
        low, high = out.get("low"), out.get("high")
        if low is not None and high is not None and not low < high:
            raise ConfigError("%s: %s.low must be below %s.high (got %r and %r)"
                              % (self.source, field, field, low, high))
        hyst = self.number(spec, field + ".hysteresis", 0)
        if hyst < 0:
            self.fail(field + ".hysteresis", "a number >= 0", hyst)
        if low is not None and high is not None and not hyst < high - low:
            self.fail(field + ".hysteresis", "less than high - low (%r)" % (high - low), hyst)
        out["hysteresis"] = hyst
        out["debounce"] = self.integer(spec, field + ".debounce", 1, 255, 1)
        return out

    def wifi(self, d):
        ssid = self.required(d, "wifi.ssid", "the network name")
        if not (isinstance(ssid, str) and 1 <= len(ssid.encode()) <= 32):
            self.fail("wifi.ssid", "a string of 1-32 bytes", ssid)
        psk = d.get("psk", "")
        ok = isinstance(psk, str) and (
            psk == "" or 8 <= len(psk) <= 63 or (len(psk) == 64 and all(ch in _HEX for ch in psk)))
        if not ok:  # never echo a secret back, not even a malformed one
            raise ConfigError("%s: wifi.psk must be empty (open network), 8-63 characters or 64 hex digits"
                              % self.source)
        return {"ssid": ssid, "psk": psk}

    def bench(self, d):
        i2c = self.required(d, "bench.i2c", "\"HOST:PORT\" of the emulated sensor bus")
        colon = i2c.rfind(":") if isinstance(i2c, str) else -1
        port = i2c[colon + 1:] if colon > 0 else ""
        if not (0 < len(port) <= 5 and all(c in "0123456789" for c in port) and 1 <= int(port) <= 65535):
            self.fail("bench.i2c", "\"HOST:PORT\" with a port 1-65535", i2c)
        bus = self.text(d, "bench.bus", "the name of the node's bus on the bench")
        return {"i2c": i2c, "bus": bus}

    def board(self, b):
        """The parts of the board object the firmware uses; the host validates the whole file."""
        if b is None:
            self.fail("board", "the board data object from boards/<name>.json", None, missing=True)
        if not isinstance(b, dict):
            self.fail("board", "a JSON object", b)
        self.text(b, "board.name", "the board name")
        platform = self.required(b, "board.platform", "one of " + ", ".join(PLATFORMS))
        if platform not in PLATFORMS:
            self.fail("board.platform", "one of " + ", ".join(PLATFORMS), platform)
        i2c = self.section(b, "board.i2c", ("id", "scl", "sda", "freq"), required=True)
        self.integer(i2c, "board.i2c.id", 0, 15, None)
        for pin in ("scl", "sda"):
            if platform == "esp32" or i2c.get(pin) is not None:
                self.integer(i2c, "board.i2c." + pin, 0, 63, None, "a GPIO number 0-63")
        self.integer(i2c, "board.i2c.freq", 1000, 1000000, None)
        sensor = self.section(b, "board.sensor", ("family", "address"), required=True)
        self.text(sensor, "board.sensor.family", "a sensor family such as \"bme280\"")
        self.integer(sensor, "board.sensor.address", 0x08, 0x77, None, "an I2C address 0x08-0x77")
        led = b.get("status_led")
        if led is not None:
            if not isinstance(led, dict):
                self.fail("board.status_led", "a JSON object or null", led)
            kind = self.required(led, "board.status_led.kind", "\"gpio\" or \"ws2812\"")
            if kind not in ("gpio", "ws2812"):
                self.fail("board.status_led.kind", "\"gpio\" or \"ws2812\"", kind)
            self.integer(led, "board.status_led.pin", 0, 63, None, "a GPIO number 0-63")
            if not isinstance(led.get("active_high", True), bool):
                self.fail("board.status_led.active_high", "true or false", led["active_high"])
        return b


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    # value - value is 0 for finite numbers, nan for inf and nan.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and value - value == 0
