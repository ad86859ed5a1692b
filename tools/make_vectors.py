"""Write tests/vectors/seal_v1.json: sealed and rejected messages of wire protocol v1 (docs/protocol.md).

Deterministic: fixed master keys, node ids and IVs, so the file only changes when the protocol code does.
The keys are public test keys. `--check` exits 1 if the file on disk differs from what would be written.

    .venv/bin/python tools/make_vectors.py [--check]
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "host"))

from fieldnode import protocol  # noqa: E402
from fieldnode.protocol import Alarm, Reading, pad, seal, seal_raw  # noqa: E402

OUT = REPO / "tests" / "vectors" / "seal_v1.json"


def _test_bytes(label, n):
    return hashlib.sha256(b"fieldnode test vector " + label.encode()).digest()[:n]


KEY_A = _test_bytes("master A", 32)
KEY_B = _test_bytes("master B", 32)
NODE_LONG = "Node_32-chars-long_abcdefghijklm"
assert len(NODE_LONG) == 32

# name, master, key_id, node_id, boot, seq, body, iv label
SEALED = [
    ("reading-basic", KEY_A, 1, "node-01", 1, 1,
     Reading(1714564800, 1, 21.456, 45.678, 101325.126, 0, 0), "iv 1"),
    ("reading-seq-2", KEY_A, 1, "node-01", 1, 2,
     Reading(1714564860, 1, 21.5, 45.6, 101325.0, 0, 0), "iv 2"),
    ("reading-negative-temperatures", KEY_A, 1, "node-01", 2, 17,
     Reading(1714568400, 1, -12.34, 80.0, 98765.43, 0b000001, 0), "iv 3"),
    ("reading-negative-zero", KEY_A, 1, "node-01", 2, 18,
     Reading(1714568460, 1, -0.004, 0.004, 0.0, 0, 0), "iv 4"),
    ("reading-minus-40", KEY_A, 1, "node-01", 2, 19,
     Reading(1714568520, 2, -40.0, 100.0, 110000.0, 0b000001, 0), "iv 5"),
    ("reading-all-invalid-unsynced", KEY_A, 1, "node-01", 3, 20,
     Reading(312, 0, None, None, None, 0, 0b0001), "iv 6"),
    ("reading-some-invalid", KEY_B, 7, "node-01", 3, 21,
     Reading(1714572000, 1, None, 55.5, 100000.01, 0, 0b1000), "iv 7"),
    ("reading-extremes-low", KEY_A, 1, "node-01", 3, 22,
     Reading(0, 1, -327.67, 0.0, 0.0, 0b010101, 0), "iv 8"),
    ("reading-extremes-high", KEY_A, 1, "node-01", 3, 23,
     Reading(0xFFFFFFFF, 1, 327.67, 655.34, 42949672.94, 0b101010, 0b1111), "iv 9"),
    ("reading-long-node-max-ids", KEY_B, 65535, NODE_LONG, 65535, 2**32 - 1,
     Reading(1714575600, 2, 5.25, 33.33, 101000.5, 0b000110, 0b1100), "iv 10"),
    ("alarm-temperature-high-raised", KEY_A, 1, "node-01", 4, 30,
     Alarm(1714579200, 1, 0, True, True, 30.52, 30.0), "iv 11"),
    ("alarm-temperature-high-cleared", KEY_A, 1, "node-01", 4, 31,
     Alarm(1714579800, 1, 0, False, True, 29.48, 30.0), "iv 12"),
    ("alarm-temperature-low-raised-negative", KEY_A, 1, "node-01", 4, 32,
     Alarm(1714580400, 1, 0, True, False, -5.51, -5.0), "iv 13"),
    ("alarm-humidity-low-cleared", KEY_B, 7, "node-01", 4, 33,
     Alarm(1714581000, 2, 1, False, False, 25.1, 25.0), "iv 14"),
    ("alarm-pressure-low-raised", KEY_A, 1, "node-01", 4, 34,
     Alarm(1714581600, 0, 2, True, False, 95000.12, 95000.0), "iv 15"),
    ("alarm-long-node-max-ids", KEY_B, 65535, NODE_LONG, 65535, 2**32 - 1,
     Alarm(1714582200, 1, 1, True, True, 90.01, 90.0), "iv 16"),
]


def _body_input(body):
    # The values as the node holds them before sealing (floats in channel units, None = no valid value).
    if isinstance(body, Reading):
        return {"timestamp": body.timestamp, "time_quality": body.time_quality,
                "temperature_c": body.temperature_c, "humidity_rh": body.humidity_rh,
                "pressure_pa": body.pressure_pa, "alarm_bits": body.alarm_bits, "sensor_status": body.sensor_status}
    return {"timestamp": body.timestamp, "time_quality": body.time_quality, "channel": body.channel,
            "raised": body.raised, "high": body.high, "transition": int(body.raised) | int(body.high) << 1,
            "value": body.value, "limit": body.limit}


def _flip(message, index, mask=0x01):
    out = bytearray(message)
    out[index] ^= mask
    return bytes(out)


def _rejected():
    base = seal(KEY_A, "node-01", 1, 1, 1, SEALED[0][6], _test_bytes("iv 1", 16))
    good = Reading(1714564800, 1, 21.0, 40.0, 100000.0, 0, 0).encode()
    iv = _test_bytes("iv rejected", 16)

    def raw(type_=protocol.TYPE_READING, plaintext=pad(good), version=protocol.VERSION, key_id=1):
        return seal_raw(KEY_A, "node-01", key_id, 1, 5, type_, plaintext, iv, version)

    alarm = bytearray(Alarm(1714564800, 1, 0, True, True, 30.5, 30.0).encode())
    alarm_bad_channel = bytes(alarm[:5]) + b"\x03" + bytes(alarm[6:])
    reading_bad_quality = good[:4] + b"\x03" + good[5:]
    reading_bad_status = good[:14] + b"\x10"
    a, b = {1: KEY_A}, {2: KEY_B}
    cases = [
        ("tampered-tag", base[:-1] + bytes([base[-1] ^ 0x80]), "node-01", a, "bad-tag"),
        ("tampered-header-boot", _flip(base, 5), "node-01", a, "bad-tag"),
        ("tampered-header-seq", _flip(base, 9), "node-01", a, "bad-tag"),
        ("tampered-header-type", _flip(base, 1, 0x03), "node-01", a, "bad-tag"),
        ("tampered-iv", _flip(base, 12), "node-01", a, "bad-tag"),
        ("tampered-ciphertext", _flip(base, 30), "node-01", a, "bad-tag"),
        ("wrong-node-id", base, "node-02", a, "bad-tag"),
        ("wrong-node-id-prefix", base, "node-0", a, "bad-tag"),
        ("wrong-key", base, "node-01", {1: KEY_B}, "bad-tag"),
        ("empty", b"", "node-01", a, "malformed"),
        ("header-only", base[:10], "node-01", a, "malformed"),
        ("truncated", base[:-1], "node-01", a, "malformed"),
        ("extra-byte", base + b"\x00", "node-01", a, "malformed"),
        ("too-long", raw(plaintext=pad(good + bytes(200))), "node-01", a, "malformed"),
        ("unknown-key-id", base, "node-01", b, "unknown-key-id"),
        ("unknown-key-id-before-tag", base[:-1] + bytes([base[-1] ^ 1]), "node-01", b, "unknown-key-id"),
        ("bad-version", raw(version=2), "node-01", a, "bad-version"),
        ("bad-version-0", raw(version=0), "node-01", a, "bad-version"),
        ("bad-version-before-key-id", raw(version=2, key_id=9), "node-01", a, "bad-version"),
        ("bad-padding-zero", raw(plaintext=good + b"\x00"), "node-01", a, "bad-padding"),
        ("bad-padding-17", raw(plaintext=good + b"\x11"), "node-01", a, "bad-padding"),
        ("bad-padding-inconsistent", raw(plaintext=good[:14] + b"\x01\x02"), "node-01", a, "bad-padding"),
        ("bad-padding-too-long", raw(plaintext=bytes(15) + b"\x10"), "node-01", a, "bad-padding"),
        ("unknown-type", raw(type_=3), "node-01", a, "bad-body"),
        ("type-0", raw(type_=0), "node-01", a, "bad-body"),
        ("reading-body-short", raw(plaintext=pad(good[:14])), "node-01", a, "bad-body"),
        ("reading-body-long", raw(plaintext=pad(good + b"\x00")), "node-01", a, "bad-body"),
        ("largest-length-bad-body", raw(plaintext=pad(good + bytes(192))), "node-01", a, "bad-body"),
        ("reading-undefined-time-quality", raw(plaintext=pad(reading_bad_quality)), "node-01", a, "bad-body"),
        ("reading-undefined-status-bit", raw(plaintext=pad(reading_bad_status)), "node-01", a, "bad-body"),
        ("alarm-undefined-channel", raw(type_=2, plaintext=pad(alarm_bad_channel)), "node-01", a, "bad-body"),
        ("alarm-body-short", raw(type_=2, plaintext=pad(good[:14])), "node-01", a, "bad-body"),
    ]
    assert len(raw(plaintext=pad(good + bytes(192)))) == 250
    return [{"name": name, "message": msg.hex(), "node_id": node,
             "keys": {str(k): v.hex() for k, v in keys.items()}, "reason": reason}
            for name, msg, node, keys, reason in cases]


def build():
    keys = []
    for master in (KEY_A, KEY_B):
        enc, mac = protocol.derive_keys(master)
        keys.append({"master": master.hex(), "enc_key": enc.hex(), "mac_key": mac.hex()})
    sealed = []
    for name, master, key_id, node_id, boot, seq, body, iv_label in SEALED:
        iv = _test_bytes(iv_label, 16)
        message = seal(master, node_id, key_id, boot, seq, body, iv)
        opened = protocol.open_message(message, node_id, {key_id: master})
        sealed.append({
            "name": name, "type": protocol.TYPE_NAMES[body.TYPE], "master": master.hex(), "key_id": key_id,
            "node_id": node_id, "boot": boot, "seq": seq, "iv": iv.hex(), "input": _body_input(body),
            "body": body.encode().hex(), "message": message.hex(), "decoded": opened.as_dict(),
        })
    return {
        "protocol": "fieldnode wire protocol v1 (docs/protocol.md); made by tools/make_vectors.py; public test keys",
        "keys": keys,
        "sealed": sealed,
        "rejected": _rejected(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if %s is not up to date" % OUT.name)
    args = parser.parse_args(argv)
    vectors = build()
    text = json.dumps(vectors, indent=1, sort_keys=True) + "\n"
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("%s is out of date: run tools/make_vectors.py" % OUT.relative_to(REPO), file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print("wrote %s (%d sealed, %d rejected)" % (OUT.relative_to(REPO), len(vectors["sealed"]),
                                                   len(vectors["rejected"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
