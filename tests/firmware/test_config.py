# node.config: valid configs round-trip, every kind of bad input names its field, missing file.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py).
import json
import os

from node.config import ConfigError, load, parse

ESP32_BOARD = {
    "name": "esp32-devkitc", "platform": "esp32", "chip": "esp32",
    "i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 400000},
    "sensor": {"family": "bme280", "address": 119},
    "status_led": None,
}
UNIX_BOARD = {
    "name": "unix", "platform": "unix", "chip": None,
    "i2c": {"id": 0, "scl": None, "sda": None, "freq": 400000},
    "sensor": {"family": "bme280", "address": 118},
    "status_led": None,
}


def minimal(**changes):
    d = {"node_id": "cold-room_7", "key_id": 513, "broker": {"host": "broker.local"}, "board": UNIX_BOARD}
    d.update(changes)
    return d


def full():
    return {
        "node_id": "A-z_09",
        "key_id": 65535,
        "broker": {"host": "10.0.0.2", "port": 18883, "keepalive_s": 30, "server_name": "broker.plant",
                   "timeout_s": 2.5, "retry_min_s": 0.5, "retry_max_s": 120},
        "interval_s": 2.5,
        "thresholds": {
            "temperature_c": {"low": 2.0, "high": 8.0, "hysteresis": 0.5, "debounce": 3},
            "pressure_pa": {"high": 105000, "hysteresis": 0, "debounce": 1},
        },
        "calibration": {"temperature_c": -0.25, "humidity_rh": 1.5, "pressure_pa": 12},
        "sensor": {"address": 0x77, "osrs_t": 1, "osrs_h": 4, "osrs_p": 8, "iir": 16},
        "files": {"ca": "a.der", "cert": "b.der", "key": "c.der", "payload_key": "d.key"},
        "queue": {"records": 20000, "replay": 25},
        "board": ESP32_BOARD,
        "wifi": {"ssid": "plant-3", "psk": "correct horse"},
    }


def error(data):
    try:
        parse(data)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("config.json: "), message
        return message
    raise AssertionError("accepted: %r" % (data,))


def test_defaults():
    c = parse(minimal())
    assert c.node_id == "cold-room_7" and c.key_id == 513
    assert c.broker == {"host": "broker.local", "port": 8883, "keepalive_s": 60, "timeout_s": 5, "retry_min_s": 1,
                        "retry_max_s": 60}
    assert c.queue == {"records": 4096, "replay": 10}
    assert c.interval_s == 10
    assert c.thresholds == {}
    assert c.calibration == {"temperature_c": 0, "humidity_rh": 0, "pressure_pa": 0}
    assert c.sensor == {"address": 0x76, "osrs_t": 2, "osrs_h": 1, "osrs_p": 16, "iir": 0}
    assert c.files == {"ca": "ca.der", "cert": "node.der", "key": "node.key.der", "payload_key": "payload.key"}
    assert c.board is UNIX_BOARD
    assert c.wifi is None and c.bench is None


def test_full_config_round_trips():
    d = full()
    c = parse(d)
    assert c.as_dict() == d
    assert parse(json.loads(json.dumps(c.as_dict()))).as_dict() == d
    assert c.thresholds["temperature_c"] == {"low": 2.0, "high": 8.0, "hysteresis": 0.5, "debounce": 3}
    assert c.calibration == {"temperature_c": -0.25, "humidity_rh": 1.5, "pressure_pa": 12}
    assert c.wifi == {"ssid": "plant-3", "psk": "correct horse"}
    assert c.broker["server_name"] == "broker.plant"


def test_defaults_round_trip_and_sensor_address_follows_board():
    d = minimal(board=ESP32_BOARD, wifi={"ssid": "x"})
    c = parse(d)
    assert c.sensor["address"] == 119  # the board's sensor address
    assert c.wifi["psk"] == ""
    again = parse(c.as_dict())
    assert again.as_dict() == c.as_dict()


def test_thresholds_are_normalised_for_alarms():
    c = parse(minimal(thresholds={"humidity_rh": {"low": 20, "high": None}}))
    assert c.thresholds == {"humidity_rh": {"low": 20, "hysteresis": 0, "debounce": 1}}


def test_bench_on_unix():
    c = parse(minimal(bench={"i2c": "127.0.0.1:7001", "bus": "i2c0"}))
    assert c.bench == {"i2c": "127.0.0.1:7001", "bus": "i2c0"}
    assert c.as_dict()["bench"] == c.bench


def test_the_example_message():
    assert error(minimal(broker={"host": "h", "port": "abc"})) == \
        "config.json: broker.port must be an integer 1-65535 (got 'abc')"


# (change to a minimal config, text the message must contain)
BAD = (
    ({"node_id": ""}, "node_id"),
    ({"node_id": "a" * 33}, "node_id"),
    ({"node_id": "room 7"}, "node_id"),
    ({"node_id": 7}, "node_id"),
    ({"key_id": -1}, "key_id"),
    ({"key_id": 65536}, "key_id"),
    ({"key_id": True}, "key_id"),
    ({"key_id": 1.0}, "key_id"),
    ({"broker": {"port": 1883}}, "broker.host is missing"),
    ({"broker": {"host": ""}}, "broker.host"),
    ({"broker": {"host": "h", "port": 0}}, "broker.port"),
    ({"broker": {"host": "h", "keepalive_s": -5}}, "broker.keepalive_s"),
    ({"broker": {"host": "h", "hots": "x"}}, "broker.hots is not a known field"),
    ({"broker": {"host": "h", "server_name": 5}}, "broker.server_name"),
    ({"broker": "h:8883"}, "broker must be a JSON object"),
    ({"broker": {"host": "h", "timeout_s": 0}}, "broker.timeout_s must be a number 0.1-60"),
    ({"broker": {"host": "h", "timeout_s": "5"}}, "broker.timeout_s must be a number"),
    ({"broker": {"host": "h", "retry_min_s": 0.05}}, "broker.retry_min_s"),
    ({"broker": {"host": "h", "retry_max_s": 7200}}, "broker.retry_max_s"),
    ({"broker": {"host": "h", "retry_min_s": 30, "retry_max_s": 10}}, "broker.retry_max_s must be at least"),
    ({"queue": {"records": 15}}, "queue.records must be an integer 16-1000000"),
    ({"queue": {"records": 100.5}}, "queue.records"),
    ({"queue": {"replay": 0}}, "queue.replay"),
    ({"queue": {"size": 10}}, "queue.size is not a known field"),
    ({"queue": 100}, "queue must be a JSON object"),
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": "10"}, "interval_s"),
    ({"interval_s": float("inf")}, "interval_s"),
    ({"thresholds": {"temp": {"high": 8}}}, "thresholds.temp is not a known field"),
    ({"thresholds": {"temperature_c": {"hihg": 8}}}, "thresholds.temperature_c.hihg is not a known field"),
    ({"thresholds": {"temperature_c": {"high": "8"}}}, "thresholds.temperature_c.high"),
    ({"thresholds": {"temperature_c": {"low": 8, "high": 8}}}, "thresholds.temperature_c.low must be below"),
    ({"thresholds": {"humidity_rh": {"high": 80, "hysteresis": -1}}}, "thresholds.humidity_rh.hysteresis"),
    ({"thresholds": {"humidity_rh": {"low": 40, "high": 50, "hysteresis": 10}}}, "thresholds.humidity_rh.hysteresis"),
    ({"thresholds": {"pressure_pa": {"high": 105000, "debounce": 0}}}, "thresholds.pressure_pa.debounce"),
    ({"thresholds": {"pressure_pa": {"high": 105000, "debounce": 1.5}}}, "thresholds.pressure_pa.debounce"),
    ({"thresholds": {"pressure_pa": 5}}, "thresholds.pressure_pa must be a JSON object"),
    ({"calibration": {"temperature_c": "0.5"}}, "calibration.temperature_c"),
    ({"calibration": {"dew_point": 1}}, "calibration.dew_point is not a known field"),
    ({"sensor": {"osrs_t": 3}}, "sensor.osrs_t must be one of 1, 2, 4, 8, 16"),
    ({"sensor": {"osrs_p": 5}}, "sensor.osrs_p"),
    ({"sensor": {"osrs_h": 0}}, "sensor.osrs_h"),
    ({"sensor": {"iir": 1}}, "sensor.iir must be one of 0, 2, 4, 8, 16"),
    ({"sensor": {"address": 0x80}}, "sensor.address"),
    ({"files": {"ca": ""}}, "files.ca"),
    ({"files": {"key": "../node.key"}}, "files.key"),
    ({"board": None}, "board is missing"),
    ({"board": dict(UNIX_BOARD, platform="esp8266")}, "board.platform"),
    ({"board": dict(UNIX_BOARD, i2c={"id": 0, "freq": 400000, "sda": None, "scl": None, "speed": 1})},
     "board.i2c.speed is not a known field"),
    ({"board": dict(ESP32_BOARD, i2c={"id": 0, "scl": None, "sda": 21, "freq": 400000})}, "board.i2c.scl"),
    ({"board": dict(UNIX_BOARD, sensor={"family": "bme280"})}, "board.sensor.address is missing"),
    ({"board": dict(UNIX_BOARD, status_led={"kind": "lamp", "pin": 2})}, "board.status_led.kind"),
    ({"board": ESP32_BOARD}, "wifi is missing"),
    ({"wifi": {"ssid": ""}}, "wifi.ssid"),
    ({"wifi": {"ssid": "x" * 33}}, "wifi.ssid"),
    ({"wifi": {"psk": "password1"}}, "wifi.ssid is missing"),
    ({"bench": {"i2c": "localhost", "bus": "b"}}, "bench.i2c"),
    ({"bench": {"i2c": "localhost:99999", "bus": "b"}}, "bench.i2c"),
    ({"bench": {"i2c": "localhost:7001"}}, "bench.bus is missing"),
    ({"board": ESP32_BOARD, "wifi": {"ssid": "x"}, "bench": {"i2c": "h:1", "bus": "b"}},
     "bench is only for the unix board"),
    ({"colour": "blue"}, "colour is not a known field"),
)


def test_each_bad_input_names_its_field():
    for change, expected in BAD:
        message = error(minimal(**change))
        assert expected in message, (change, message)


def test_missing_required_fields():
    for field in ("node_id", "key_id", "broker"):
        d = minimal()
        del d[field]
        assert field + " is missing" in error(d)


def test_not_an_object():
    assert "must be a JSON object" in error([1, 2])


def test_psk_is_never_echoed():
    message = error(minimal(wifi={"ssid": "x", "psk": "short12"}))
    assert "wifi.psk" in message and "short12" not in message
    assert parse(minimal(wifi={"ssid": "x", "psk": "ab" * 32})).wifi["psk"] == "ab" * 32
    assert "wifi.psk" in error(minimal(wifi={"ssid": "x", "psk": "zz" * 32}))


def test_missing_file():
    path = "/nonexistent-fieldnode-dir/config.json"
    try:
        load(path)
    except ConfigError as exc:
        assert str(exc) == path + " not found: provision the node with `fieldnode provision`"
    else:
        raise AssertionError("no error")


def _tmp_path():
    return "/tmp/fieldnode-test-config-%d.json" % id(object())


def test_load_reads_a_file_and_reports_bad_json():
    path = _tmp_path()
    try:
        with open(path, "w") as f:
            json.dump(full(), f)
        assert load(path).as_dict() == full()
        with open(path, "w") as f:
            f.write('{"node_id": ')
        try:
            load(path)
        except ConfigError as exc:
            assert str(exc).startswith(path + ": not valid JSON"), str(exc)
        else:
            raise AssertionError("no error")
        with open(path, "w") as f:
            json.dump(minimal(broker={"host": "h", "port": 70000}), f)
        try:
            load(path)
        except ConfigError as exc:
            assert str(exc).startswith(path + ": broker.port must be"), str(exc)
        else:
            raise AssertionError("no error")
    finally:
        os.remove(path)
