# node.config against hostile config files: broken JSON, wrong types in every field, huge values, deep
# nesting, bytes that are not UTF-8, an empty file. Every case ends in a ConfigError with a one-line message
# naming the file; nothing else may escape (a board must land at the REPL with that line, not a traceback).
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
import json
import os
import sys

from node.config import ConfigError, load, parse

UNIX_BOARD = {
    "name": "unix", "platform": "unix", "chip": None,
    "i2c": {"id": 0, "scl": None, "sda": None, "freq": 400000},
    "sensor": {"family": "bme280", "address": 118},
    "status_led": None,
}
ESP32_BOARD = {
    "name": "esp32-devkitc", "platform": "esp32", "chip": "esp32",
    "i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 400000},
    "sensor": {"family": "bme280", "address": 119},
    "status_led": {"kind": "gpio", "pin": 2, "active_high": True},
}

# Values of every JSON type, and extremes of each.
HOSTILE_VALUES = (None, True, False, 0, -1, 1.5, -1e308, 1e308, 10 ** 40, "", "x", "x" * 5000, "\u00ff\u4e2d",
                  "a\u0000b", [], [1, 2], {}, {"a": 1}, [[[[[[[[]]]]]]]], {"node_id": {"node_id": {}}})


def _path():
    return "/tmp/fieldnode-test-hostile-%d.json" % id(object())


def full(board=UNIX_BOARD):
    d = {
        "node_id": "cold-room_7",
        "key_id": 513,
        "broker": {"host": "10.0.0.2", "port": 18883, "keepalive_s": 30, "server_name": "broker.plant"},
        "interval_s": 2.5,
        "thresholds": {"temperature_c": {"low": 2.0, "high": 8.0, "hysteresis": 0.5, "debounce": 3}},
        "calibration": {"temperature_c": -0.25, "humidity_rh": 1.5, "pressure_pa": 12},
        "sensor": {"address": 118, "osrs_t": 1, "osrs_h": 4, "osrs_p": 8, "iir": 16},
        "files": {"ca": "a.der", "cert": "b.der", "key": "c.der", "payload_key": "d.key"},
        "board": board,
    }
    if board is UNIX_BOARD:
        d["bench"] = {"i2c": "127.0.0.1:7001", "bus": "i2c0"}
    else:
        d["wifi"] = {"ssid": "plant-3", "psk": "correct horse"}
    return d


def _copy(d):
    return json.loads(json.dumps(d))


def field_paths(d, prefix=()):
    """Every path to a value in d, containers included."""
    out = []
    for k in d:
        path = prefix + (k,)
        out.append(path)
        if isinstance(d[k], dict):
            out += field_paths(d[k], path)
    return out


def replaced(d, path, value):
    d = _copy(d)
    where = d
    for k in path[:-1]:
        where = where[k]
    where[path[-1]] = value
    return d


def outcome(fn, arg):
    """"ok" if fn(arg) accepted it, else the ConfigError's message; any other exception fails the test."""
    result = call(fn, arg)
    return result if isinstance(result, str) else "ok"


def call(fn, arg):
    """fn(arg)'s result, or the ConfigError's message (one line); any other exception fails the test."""
    try:
        return fn(arg)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        assert len(message) < 400, message
        return message


def load_file(data):
    """Write data (bytes or str) to a file and load it: the Config, or the ConfigError's message."""
    path = _path()
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    try:
        result = call(load, path)
    finally:
        os.remove(path)
    if isinstance(result, str):
        assert result.startswith(path + ": "), result
    return result


def load_text(data):
    result = load_file(data)
    return result if isinstance(result, str) else "ok"


def test_the_valid_files_load():
    for board in (UNIX_BOARD, ESP32_BOARD):
        assert load_text(json.dumps(full(board))) == "ok"


def test_json_syntax_errors():
    good = json.dumps(full())
    expected = parse(full()).as_dict()
    broken = (good[:-1], good[1:], good + "}", good + " x", good.replace(":", "=", 1), good.replace('"', "'"),
              good.replace(",", ",,", 1), good.replace(", ", ", // c\n", 1), good.replace(": 513", ": 0513"),
              good.replace(",", "", 1), good[:-1] + ",}", "{", "}", "[", "{,}", '{"a"}', '{"a":}',
              "{'node_id': 1}", '{"key_id": 0x10}', '{"key_id": 01}', '{"key_id": +1}', '{"key_id": .5}',
              '{"key_id": 1.}', '{"interval_s": Infinity}', '{"interval_s": -Infinity}', '{"a": tru}',
              '{"a": "\\x41"}', '{"a": "\\ud800"', '{"a": "unterminated}', "\x00", "\x1a", "{" + "\n" * 1000,
              '{"a" "b"}', '{"a": 1 "b": 2}', '{"a": [1 2]}', '{"a":1}}', '[1,]')
    for text in broken:
        result = load_file(text)
        # CPython's parser refuses them all. MicroPython's is lenient (a doubled or missing comma, a missing
        # colon or value pass); what it makes of them is still validated field by field, so a config it
        # accepts is exactly the one intended, never another.
        if not isinstance(result, str):
            assert sys.implementation.name == "micropython", text
            assert result.as_dict() == expected, text


def test_empty_and_whitespace_files():
    for text in ("", " ", "\n\n", "\t"):
        assert "not valid JSON" in load_text(text), repr(text)


def test_not_an_object_at_the_top():
    for text in ("null", "true", "0", "1e308", '"config"', "[]", "[{}]"):
        assert "must be a JSON object" in load_text(text), text


def test_bytes_that_are_not_utf8():
    good = json.dumps(full()).encode()
    for data in (b"\xff\xfe\x00\x01", b"\x80", b'{"node_id": "\xff\xfe"}', b'{"node_id": "caf\xe9"}',
                 b"\xef\xbb\xbf" + good, b"\xfe\xff" + good, good.replace(b'"node_id"', b'"node_\xc0id"'),
                 b'{"wifi": {"ssid": "\xed\xa0\x80"}}', bytes(range(256))):
        assert load_text(data) != "ok", data[:20]


def test_wrong_types_in_every_field():
    for board in (UNIX_BOARD, ESP32_BOARD):
        base = full(board)
        paths = field_paths(base)
        rejected = 0
        for path in paths:
            for value in HOSTILE_VALUES:
                message = outcome(parse, replaced(base, path, value))
                if message != "ok":
                    rejected += 1
                    assert message.startswith("config.json: "), message
        # a few hostile values are valid in some fields (a float interval, an empty calibration...);
        # the rest must all have been refused
        assert rejected > len(paths) * len(HOSTILE_VALUES) * 3 // 4, rejected


def test_wrong_types_name_the_field():
    base = full()
    for path in (("node_id",), ("key_id",), ("broker", "port"), ("thresholds", "temperature_c", "high"),
                 ("sensor", "osrs_t"), ("files", "key"), ("board", "i2c", "freq"), ("bench", "i2c")):
        for value in ([], {}, [[[[]]]], True):
            message = outcome(parse, replaced(base, path, value))
            assert ".".join(path) in message, (path, value, message)


def test_unknown_fields_anywhere():
    for board, extra in ((UNIX_BOARD, "bench"), (ESP32_BOARD, "wifi")):   # the section only that board has
        containers = ((), ("broker",), ("thresholds",), ("thresholds", "temperature_c"), ("calibration",),
                      ("sensor",), ("files",), ("board", "i2c"), ("board", "sensor"), (extra,))
        for container in containers:
            message = outcome(parse, replaced(full(board), container + ("surprise",), 1))
            assert ".".join(container + ("surprise",)) + " is not a known field" in message, (container, message)


def test_huge_values():
    base = full()
    # (field, value, must be refused); the others may be valid, but must not raise anything else either
    for path, value, refused in ((("key_id",), 10 ** 300, True), (("key_id",), -10 ** 300, True),
                                 (("interval_s",), 1e308, False), (("broker", "port"), 2 ** 64, True),
                                 (("broker", "host"), "h" * 100000, False),
                                 (("thresholds", "temperature_c", "debounce"), 10 ** 30, True),
                                 (("thresholds", "temperature_c", "high"), 1e308, False),
                                 (("node_id",), "n" * 100000, True), (("files", "ca"), "f" * 100000, False),
                                 (("bench", "i2c"), "h:" + "9" * 5000, True), (("bench", "i2c"), "h:" + "1" * 6, True),
                                 (("calibration", "pressure_pa"), list(range(10000)), True)):
        message = outcome(parse, replaced(base, path, value))
        if refused:
            assert ".".join(path) in message, (path, message)


def test_huge_files():
    # far beyond any real config: refused before it can exhaust a board's heap
    padding = " " * 200000
    assert load_text("{" + padding + '"node_id": "a"}') != "ok"
    big = full()
    big["broker"]["host"] = "h" * 200000
    assert load_text(json.dumps(big)) != "ok"
    assert load_text("[" + "1," * 100000 + "1]") != "ok"


def test_deep_nesting():
    for depth in (64, 1000, 5000):
        for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth, "[" * depth,
                     '{"node_id": ' + "[" * depth + "]" * depth + "}",
                     '{"node_id": "a", "key_id": 1, "broker": {"host": "h"}, "thresholds": {"temperature_c": '
                     '{"high": ' + "[" * depth + "]" * depth + "}}}"):
            assert load_text(text) != "ok", text[:40]


def test_deep_nesting_in_a_parsed_dict():
    value = []
    for _ in range(3000):
        value = [value]
    for path in (("node_id",), ("broker", "host"), ("thresholds", "temperature_c", "low"), ("bench", "i2c")):
        d = full()   # set in place: a 3000-deep list may not survive a JSON round trip on CPython
        where = d
        for k in path[:-1]:
            where = where[k]
        where[path[-1]] = value
        message = outcome(parse, d)
        assert ".".join(path) in message, message


def test_duplicate_keys_and_odd_spellings():
    good = json.dumps(full())
    # JSON allows a repeated key (the last wins): a typo'd duplicate still has to validate
    assert "key_id" in load_text(good[:-1] + ', "key_id": "513"}')
    assert "node_id" in load_text(good[:-1] + ', "node_id": "room 7"}')
    assert "NODE_ID is not a known field" in load_text(good[:-1] + ', "NODE_ID": "x"}')


def test_values_that_would_break_the_loop_later_are_refused_up_front():
    # Each of these once passed validation and crashed the node when used (int overflow, unsealable value).
    for path, value in (("interval_s", 1e308), ("interval_s", 0), ("calibration.temperature_c", 400.0),
                        ("calibration.pressure_pa", -1e9), ("thresholds.temperature_c.high", 1e12),
                        ("thresholds.humidity_rh.low", -5)):
        data = full()
        where = data
        parts = path.split(".")
        for p in parts[:-1]:
            where = where.setdefault(p, {})
        where[parts[-1]] = value
        try:
            parse(data)
        except ConfigError as exc:
            assert parts[-1] in str(exc), str(exc)
        else:
            raise AssertionError("%s = %r accepted" % (path, value))
