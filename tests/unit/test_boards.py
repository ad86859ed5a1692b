"""boards/*.json: every file valid, flash offsets and architectures right per chip, clear errors."""
import json

import pytest
from node import config  # the firmware's own check of the board object (tests/conftest.py puts it on the path)

from fieldnode import boards
from fieldnode.errors import FieldnodeError

EXPECTED = {"esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1", "esp32-c6-devkitc-1", "unix"}
OFFSETS = {"esp32": 0x1000, "esp32s3": 0, "esp32c3": 0, "esp32c6": 0}


def test_names_lists_every_board_file():
    assert set(boards.names()) == EXPECTED
    assert boards.names() == sorted(boards.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_board_file_is_valid(name):
    data = boards.load(name)
    assert data["name"] == name
    if data["platform"] == "esp32":
        assert data["micropython"]["flash_offset"] == OFFSETS[data["chip"]]
        assert data["micropython"]["arch"] == ("xtensawin" if data["chip"] in ("esp32", "esp32s3") else "rv32imc")
        assert data["i2c"]["scl"] != data["i2c"]["sda"]
    else:
        assert data["chip"] is None and data["micropython"]["flash_offset"] is None
    # The firmware accepts the same object inside a node config.
    cfg = {"node_id": "n1", "key_id": 1, "broker": {"host": "h"}, "board": data}
    if data["platform"] == "esp32":
        cfg["wifi"] = {"ssid": "s", "psk": "password1"}
    assert config.parse(cfg).board is data


def test_led_pins_match_the_devkits():
    assert boards.load("esp32-devkitc")["status_led"] is None
    assert boards.load("esp32-s3-devkitc-1")["status_led"] == {"kind": "ws2812", "pin": 38}
    assert boards.load("esp32-c3-devkitm-1")["status_led"] == {"kind": "ws2812", "pin": 8}
    assert boards.load("esp32-c6-devkitc-1")["status_led"] == {"kind": "ws2812", "pin": 8}
    assert boards.load("esp32-devkitc")["i2c"] == {"id": 0, "scl": 22, "sda": 21, "freq": 400000}


def test_unknown_board_lists_known_ones():
    with pytest.raises(FieldnodeError) as exc:
        boards.load("esp8266")
    message = str(exc.value)
    assert "unknown board 'esp8266'" in message
    for name in EXPECTED:
        assert name in message
    assert "\n" not in message


def _write(tmp_path, data, name="b"):
    (tmp_path / (name + ".json")).write_text(json.dumps(data))


@pytest.mark.parametrize("change, field", [
    (lambda b: b["micropython"].update(flash_offset=0), "micropython.flash_offset"),
    (lambda b: b.update(chip="esp8266"), "chip"),
    (lambda b: b["i2c"].update(sda=22), "i2c.sda"),
    (lambda b: b["i2c"].update(scl="22"), "i2c.scl"),
    (lambda b: b["sensor"].update(address=0x80), "sensor.address"),
    (lambda b: b.update(status_led={"kind": "ws2812", "pin": 21}), "status_led.pin"),
    (lambda b: b.update(status_led={"kind": "rgb", "pin": 2}), "status_led.kind"),
    (lambda b: b.update(colour="red"), "colour"),
    (lambda b: b.pop("i2c"), "i2c"),
    (lambda b: b["micropython"].update(arch="rv32imc"), "micropython.arch"),
    (lambda b: b.update(name="other"), "name"),
])
def test_bad_board_names_the_field(tmp_path, change, field):
    data = boards.load("esp32-devkitc")
    data["name"] = "b"
    change(data)
    _write(tmp_path, data)
    with pytest.raises(boards.BoardError) as exc:
        boards.load("b", tmp_path)
    assert field in str(exc.value) and str(exc.value).startswith("board b: ")


def test_invalid_json(tmp_path):
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(boards.BoardError, match="not valid JSON"):
        boards.load("b", tmp_path)
