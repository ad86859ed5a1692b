"""Board data: one JSON file per board in boards/, validated here (the firmware re-checks only what it uses).

A board file holds the facts that differ between boards and nothing else:

| field        | meaning                                                                           |
|--------------|-----------------------------------------------------------------------------------|
| name         | the file name without .json                                                        |
| description  | one line for people                                                                |
| platform     | "esp32" or "unix": which firmware/node/hal module drives it                         |
| chip         | esptool chip name (esp32, esp32s3, esp32c3, esp32c6); null for unix                |
| i2c          | {id, scl, sda, freq}: the sensor bus; scl/sda are GPIO numbers (null for unix)     |
| sensor       | {family, address}: the sensor expected on that bus (7-bit address)                 |
| status_led   | null, {"kind": "ws2812", "pin"} or {"kind": "gpio", "pin", "active_high"}           |
| micropython  | {board, version, mpy_version "MAJOR.SUB", arch (mpy-cross -march), flash_offset}   |
| flash_size   | esptool size string ("4MB"); null for unix                                         |
| notes        | optional: why the pins are what they are                                           |
"""
import json
import re
from pathlib import Path

from . import paths
from .errors import FieldnodeError

# esptool chip name -> (where the MicroPython image goes in flash, mpy-cross native architecture)
CHIPS = {
    "esp32": (0x1000, "xtensawin"),
    "esp32s3": (0x0, "xtensawin"),
    "esp32c3": (0x0, "rv32imc"),
    "esp32c6": (0x0, "rv32imc"),
}
SENSOR_FAMILIES = ("bme280",)
_KEYS = {"name", "description", "platform", "chip", "i2c", "sensor", "status_led", "micropython", "flash_size",
         "notes"}
_OPTIONAL = {"notes"}


class BoardError(FieldnodeError):
    pass


def names(directory=None):
    """Known board names, sorted."""
    return sorted(p.stem for p in _dir(directory).glob("*.json"))


def path(name, directory=None):
    known = names(directory)
    if name not in known:
        raise BoardError("unknown board %r: known boards are %s" % (name, ", ".join(known) or "(none)"))
    return _dir(directory) / (name + ".json")


def load(name, directory=None):
    """The validated board data for `name` (a dict, ready to embed in a node's config)."""
    file = path(name, directory)
    try:
        data = json.loads(file.read_text())
    except ValueError as exc:
        raise BoardError("%s: not valid JSON (%s)" % (file, exc)) from None
    validate(data, name)
    return data


def validate(data, name):
    """Raise BoardError naming the field if `data` is not a well-formed board `name`."""
    def fail(field, what):
        got = _get(data, field) if isinstance(data, dict) else data
        raise BoardError("board %s: %s must be %s (got %r)" % (name, field, what, got))

    if not isinstance(data, dict):
        fail("the file", "a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise BoardError("board %s: unknown field %s (expected %s)" % (name, unknown[0], ", ".join(sorted(_KEYS))))
    missing = sorted(_KEYS - _OPTIONAL - set(data))
    if missing:
        raise BoardError("board %s: %s is missing" % (name, missing[0]))
    if data["name"] != name:
        fail("name", "the file name %r" % name)
    for field in ("description",) + (("notes",) if "notes" in data else ()):
        if not (isinstance(data[field], str) and data[field]):
            fail(field, "a non-empty string")

    platform, chip = data["platform"], data["chip"]
    if platform not in ("esp32", "unix"):
        fail("platform", '"esp32" or "unix"')
    if platform == "esp32" and chip not in CHIPS:
        fail("chip", "one of " + ", ".join(CHIPS))
    if platform == "unix" and chip is not None:
        fail("chip", "null on the unix platform")

    i2c = data["i2c"]
    _keys(i2c, {"id", "scl", "sda", "freq"}, "i2c", name)
    if not _int(i2c["id"], 0, 15):
        fail("i2c.id", "an integer 0-15")
    if not _int(i2c["freq"], 1000, 1000000):
        fail("i2c.freq", "an integer 1000-1000000 (Hz)")
    pins = set()
    for pin in ("scl", "sda"):
        if platform == "unix":
            if i2c[pin] is not None:
                fail("i2c." + pin, "null on the unix platform")
        elif not _int(i2c[pin], 0, 63):
            fail("i2c." + pin, "a GPIO number")
        pins.add(i2c[pin])
    if platform == "esp32" and len(pins) != 2:
        fail("i2c.sda", "a different GPIO from i2c.scl")

    sensor = data["sensor"]
    _keys(sensor, {"family", "address"}, "sensor", name)
    if sensor["family"] not in SENSOR_FAMILIES:
        fail("sensor.family", "one of " + ", ".join(SENSOR_FAMILIES))
    if not _int(sensor["address"], 0x08, 0x77):
        fail("sensor.address", "a 7-bit I2C address 8-119")

    led = data["status_led"]
    if led is not None:
        if not isinstance(led, dict):
            fail("status_led", "null or an object")
        kind = led.get("kind")
        if kind == "ws2812":
            _keys(led, {"kind", "pin"}, "status_led", name)
        elif kind == "gpio":
            _keys(led, {"kind", "pin", "active_high"}, "status_led", name)
            if not isinstance(led["active_high"], bool):
                fail("status_led.active_high", "true or false")
        else:
            fail("status_led.kind", '"ws2812" or "gpio"')
        if platform != "esp32":
            fail("status_led", "null on the unix platform")
        if not _int(led["pin"], 0, 63):
            fail("status_led.pin", "a GPIO number")
        if led["pin"] in pins:
            fail("status_led.pin", "a GPIO not used by the I2C bus")

    mp = data["micropython"]
    _keys(mp, {"board", "version", "mpy_version", "arch", "flash_offset"}, "micropython", name)
    if not (isinstance(mp["version"], str) and re.fullmatch(r"\d+\.\d+(\.\d+)?", mp["version"])):
        fail("micropython.version", 'a version such as "1.24.1"')
    if not (isinstance(mp["mpy_version"], str) and re.fullmatch(r"\d+\.\d+", mp["mpy_version"])):
        fail("micropython.mpy_version", 'MAJOR.SUB such as "6.3"')
    if platform == "esp32":
        offset, arch = CHIPS[chip]
        if not (isinstance(mp["board"], str) and mp["board"]):
            fail("micropython.board", "the MicroPython board name (e.g. ESP32_GENERIC)")
        if mp["flash_offset"] != offset or isinstance(mp["flash_offset"], bool):
            fail("micropython.flash_offset", "%d for %s" % (offset, chip))
        if mp["arch"] != arch:
            fail("micropython.arch", "%r for %s" % (arch, chip))
        if not (isinstance(data["flash_size"], str) and re.fullmatch(r"(1|2|4|8|16|32|64|128)MB",
                                                                     data["flash_size"])):
            fail("flash_size", 'an esptool flash size such as "4MB"')
    else:
        if mp["board"] is not None or mp["flash_offset"] is not None:
            fail("micropython.flash_offset", "null on the unix platform (and board null)")
        if not (isinstance(mp["arch"], str) and mp["arch"]):
            fail("micropython.arch", "the mpy-cross architecture")
        if data["flash_size"] is not None:
            fail("flash_size", "null on the unix platform")
    return data


def _dir(directory):
    return paths.BOARDS if directory is None else Path(directory)


def _int(value, lo, hi):
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _keys(obj, expected, field, name):
    if not isinstance(obj, dict):
        raise BoardError("board %s: %s must be an object (got %r)" % (name, field, obj))
    if set(obj) != expected:
        extra, missing = sorted(set(obj) - expected), sorted(expected - set(obj))
        what = ("unknown field %s.%s" % (field, extra[0])) if extra else ("%s.%s is missing" % (field, missing[0]))
        raise BoardError("board %s: %s" % (name, what))


def _get(data, dotted):
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
