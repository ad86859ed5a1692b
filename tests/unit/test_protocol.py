"""Wire protocol v1 on the host: the shared vectors, every rejection reason, tampering, round trips, `decode`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldnode import cli, protocol
from fieldnode.protocol import Alarm, ProtocolError, Reading

REPO = Path(__file__).resolve().parents[2]
VECTORS = json.loads((REPO / "tests" / "vectors" / "seal_v1.json").read_text())
SEALED = VECTORS["sealed"]
REJECTED = VECTORS["rejected"]


def _body(v):
    i = v["input"]
    if v["type"] == "reading":
        return Reading(i["timestamp"], i["time_quality"], i["temperature_c"], i["humidity_rh"], i["pressure_pa"],
                       i["alarm_bits"], i["sensor_status"])
    return Alarm(i["timestamp"], i["time_quality"], i["channel"], i["raised"], i["high"], i["value"], i["limit"])


def _keys(v):
    return {int(k): bytes.fromhex(m) for k, m in v["keys"].items()}


def test_vectors_are_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_vectors.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_vectors_cover_the_brief():
    names = {v["name"] for v in SEALED}
    assert len(names) == len(SEALED)
    assert {v["type"] for v in SEALED} == {"reading", "alarm"}
    assert any(len(v["node_id"]) == 32 for v in SEALED)
    assert {1, 2, 2**32 - 1} <= {v["seq"] for v in SEALED}
    assert 65535 in {v["key_id"] for v in SEALED}
    assert {r["reason"] for r in REJECTED} == set(protocol.REASONS)


@pytest.mark.parametrize("k", VECTORS["keys"], ids=lambda k: k["master"][:8])
def test_derive_keys_matches_vector_and_independent_hmac(k):
    master = bytes.fromhex(k["master"])
    enc, mac = protocol.derive_keys(master)
    assert (enc.hex(), mac.hex()) == (k["enc_key"], k["mac_key"])
    for label, expected in ((b"fieldnode v1 enc", enc), (b"fieldnode v1 mac", mac)):
        h = HMAC(master, hashes.SHA256())
        h.update(label + b"\x01")
        assert h.finalize() == expected


def test_derive_keys_rejects_wrong_length():
    with pytest.raises(ValueError):
        protocol.derive_keys(bytes(31))


@pytest.mark.parametrize("v", SEALED, ids=lambda v: v["name"])
def test_seal_with_vector_iv_gives_exact_bytes(v):
    body = _body(v)
    assert body.encode().hex() == v["body"]
    message = protocol.seal(bytes.fromhex(v["master"]), v["node_id"], v["key_id"], v["boot"], v["seq"], body,
                            iv=bytes.fromhex(v["iv"]))
    assert message.hex() == v["message"]
    assert len(message) == 58  # every reading and alarm is one block: 10 + 16 + 16 + 16


@pytest.mark.parametrize("v", SEALED, ids=lambda v: v["name"])
def test_open_vector_gives_expected_fields(v):
    message = bytes.fromhex(v["message"])
    opened = protocol.open_message(message, v["node_id"], {v["key_id"]: bytes.fromhex(v["master"])})
    assert opened.as_dict() == v["decoded"]
    d = v["decoded"]
    assert (d["node"], d["key_id"], d["boot"], d["seq"], d["type"]) == (
        v["node_id"], v["key_id"], v["boot"], v["seq"], v["type"])
    assert protocol.parse_header(message) == (1, opened.type, v["key_id"], v["boot"], v["seq"])
    json.dumps(opened.as_dict())  # JSON-ready


def test_decoded_values_of_known_vectors():
    by_name = {v["name"]: v["decoded"] for v in SEALED}
    basic = by_name["reading-basic"]
    assert (basic["temperature_c"], basic["humidity_rh"], basic["pressure_pa"]) == (21.46, 45.68, 101325.13)
    assert basic["time"] == "2024-05-01T12:00:00Z" and basic["time_quality"] == "ntp"
    assert by_name["reading-negative-temperatures"]["temperature_c"] == -12.34
    assert by_name["reading-negative-temperatures"]["alarms"] == ["temperature_c.low"]
    assert by_name["reading-negative-zero"]["temperature_c"] == 0.0
    unsynced = by_name["reading-all-invalid-unsynced"]
    assert (unsynced["temperature_c"], unsynced["humidity_rh"], unsynced["pressure_pa"]) == (None, None, None)
    assert unsynced["time"] is None and unsynced["time_quality"] == "not_synced"
    assert unsynced["sensor_status"] == ["read_error"]
    long = by_name["reading-long-node-max-ids"]
    assert long["alarms"] == ["temperature_c.high", "humidity_rh.low"]
    assert long["sensor_status"] == ["stuck_value", "implausible_value"]
    alarm = by_name["alarm-temperature-low-raised-negative"]
    assert (alarm["channel"], alarm["alarm"], alarm["raised"], alarm["high"], alarm["value"], alarm["limit"]) == (
        "temperature_c", "temperature_c.low", True, False, -5.51, -5.0)


@pytest.mark.parametrize("v", REJECTED, ids=lambda v: v["name"])
def test_rejected_vector_gives_its_reason(v):
    with pytest.raises(ProtocolError) as exc:
        protocol.open_message(bytes.fromhex(v["message"]), v["node_id"], _keys(v))
    assert exc.value.reason == v["reason"]
    assert str(exc.value).startswith(v["reason"] + ": ") and "\n" not in str(exc.value)


@pytest.mark.parametrize("v", SEALED[:1] + SEALED[-1:], ids=lambda v: v["name"])
def test_every_single_bit_flip_is_rejected(v):
    message = bytes.fromhex(v["message"])
    keys = {v["key_id"]: bytes.fromhex(v["master"])}
    for bit in range(len(message) * 8):
        tampered = bytearray(message)
        tampered[bit // 8] ^= 0x80 >> bit % 8
        with pytest.raises(ProtocolError) as exc:
            protocol.open_message(bytes(tampered), v["node_id"], keys)
        # Flipping the version or key id gives an earlier reason; any other bit must fail the tag.
        assert exc.value.reason in ("bad-version", "unknown-key-id", "bad-tag"), bit


def test_open_checks_node_id():
    v = SEALED[0]
    with pytest.raises(ValueError):
        protocol.open_message(bytes.fromhex(v["message"]), "bad id!", {1: bytes(32)})


def test_fresh_iv_per_seal():
    body = Reading(0, 1, 20.0, 50.0, 100000.0)
    a = protocol.seal(bytes(32), "n", 1, 1, 1, body)
    b = protocol.seal(bytes(32), "n", 1, 1, 1, body)
    assert a[10:26] != b[10:26] and a != b


@pytest.mark.parametrize("kwargs", [
    dict(node_id=""), dict(node_id="x" * 33), dict(node_id="no space"), dict(node_id="nödé"),
    dict(key_id=65536), dict(key_id=-1), dict(boot=65536), dict(seq=0), dict(seq=2**32),
    dict(master=bytes(16)), dict(iv=bytes(15)),
])
def test_seal_rejects_bad_arguments(kwargs):
    args = dict(master=bytes(32), node_id="node-01", key_id=1, boot=1, seq=1, body_obj=Reading(0, 1, 1.0, 1.0, 1.0),
                iv=None)
    args.update(kwargs)
    with pytest.raises(ValueError):
        protocol.seal(**args)


@pytest.mark.parametrize("body", [
    Reading(0, 1, 327.68, 1.0, 1.0), Reading(0, 1, -327.68, 1.0, 1.0), Reading(0, 1, float("nan"), 1.0, 1.0),
    Reading(0, 1, 1.0, -0.01, 1.0), Reading(0, 1, 1.0, 655.35, 1.0), Reading(0, 1, 1.0, 1.0, 42949672.95),
    Reading(0, 3, 1.0, 1.0, 1.0), Reading(2**32, 1, 1.0, 1.0, 1.0), Reading(0, 1, 1.0, 1.0, 1.0, 0x40, 0),
    Reading(0, 1, 1.0, 1.0, 1.0, 0, 0x10), Alarm(0, 1, 3, True, True, 1.0, 1.0),
    Alarm(0, 1, 0, True, True, 21474836.48, 1.0), Alarm(0, 1, 0, True, True, 1.0, float("inf")),
])
def test_encode_refuses_values_that_do_not_fit(body):
    with pytest.raises(ValueError):
        body.encode()


_hundredths = lambda lo, hi: st.integers(lo, hi).map(lambda n: n / 100)  # noqa: E731
_readings = st.builds(
    Reading, st.integers(0, 2**32 - 1), st.integers(0, 2),
    st.none() | _hundredths(-32767, 32767), st.none() | _hundredths(0, 65534),
    st.none() | _hundredths(0, 2**32 - 2), st.integers(0, 0x3F), st.integers(0, 0x0F))
_alarms = st.builds(
    Alarm, st.integers(0, 2**32 - 1), st.integers(0, 2), st.integers(0, 2), st.booleans(), st.booleans(),
    _hundredths(-2**31, 2**31 - 1), _hundredths(-2**31, 2**31 - 1))
_node_ids = st.text("ABCXYZabcxyz0189_-", min_size=1, max_size=32)


@settings(max_examples=200, deadline=None)
@given(body=_readings | _alarms, node_id=_node_ids, key_id=st.integers(0, 65535), boot=st.integers(0, 65535),
       seq=st.integers(1, 2**32 - 1), master=st.binary(min_size=32, max_size=32))
def test_round_trip(body, node_id, key_id, boot, seq, master):
    message = protocol.seal(master, node_id, key_id, boot, seq, body)
    assert len(message) == protocol.MIN_MESSAGE_SIZE
    opened = protocol.open_message(message, node_id, {key_id: master})
    assert opened == protocol.Opened(node_id, key_id, boot, seq, body.TYPE, body)
    json.dumps(opened.as_dict())


@settings(max_examples=200, deadline=None)
@given(t=st.floats(-327.67, 327.67), h=st.floats(0, 655.34), p=st.floats(0, 1.2e5))
def test_round_trip_rounds_to_nearest_hundredth(t, h, p):
    body = Reading.decode(Reading(0, 1, t, h, p).encode())
    assert abs(body.temperature_c - t) <= 0.005 + 1e-9
    assert abs(body.humidity_rh - h) <= 0.005 + 1e-9
    assert abs(body.pressure_pa - p) <= 0.005 + 1e-6


# --- `fieldnode decode` ---

def _decode_args(v, *extra, key=None, node=None):
    return ["decode", "--key", key or v["master"], "--node", node or v["node_id"], *extra, v["message"]]


@pytest.mark.parametrize("v", [SEALED[0], SEALED[-1]], ids=lambda v: v["name"])
def test_cli_decode_prints_one_json_object(v, capsys):
    assert cli.main(_decode_args(v)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == v["decoded"]
    assert out == json.dumps(v["decoded"], sort_keys=True) + "\n"


def test_cli_decode_with_key_id(capsys):
    v = SEALED[0]
    assert cli.main(_decode_args(v, "--key-id", str(v["key_id"]))) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == v["seq"]
    assert cli.main(_decode_args(v, "--key-id", "2")) == 1
    assert capsys.readouterr().err.startswith("fieldnode: unknown-key-id: ")


@pytest.mark.parametrize("name,reason", [("tampered-tag", "bad-tag"), ("truncated", "malformed"),
                                         ("wrong-node-id", "bad-tag"), ("bad-version", "bad-version")])
def test_cli_decode_rejects_with_one_line(name, reason, capsys):
    v = next(r for r in REJECTED if r["name"] == name)
    (key_id, master), = v["keys"].items()
    assert cli.main(["decode", "--key", master, "--node", v["node_id"], v["message"]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fieldnode: %s: " % reason) and captured.err.count("\n") == 1


def test_cli_decode_payload_not_hex(capsys):
    assert cli.main(_decode_args(dict(SEALED[0], message="zz01"))) == 1
    assert capsys.readouterr().err.startswith("fieldnode: malformed: ")


@pytest.mark.parametrize("key", ["not-hex", "00" * 31, "00" * 33])
def test_cli_decode_bad_key_is_usage_error(key, capsys):
    assert cli.main(_decode_args(SEALED[0], key=key)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fieldnode: --key: ") and err.count("\n") == 1


def test_cli_decode_bad_node_id_is_usage_error(capsys):
    assert cli.main(_decode_args(SEALED[0], node="bad node")) == 2
    assert capsys.readouterr().err.startswith("fieldnode: --node: ")


def test_opening_from_many_threads_with_the_cached_contexts():
    """open_message keeps per-thread cipher contexts per (key, node): many threads opening interleaved
    messages of several nodes and keys all get their own message back, and a message never opens as
    another node's."""
    import threading

    masters = {n: os.urandom(32) for n in ("node-a", "node-b", "node-c")}
    sealed = [(n, seq, protocol.seal(masters[n], n, 1, 1, seq,
                                      protocol.Reading(1_700_000_000 + seq, 2, seq / 100, 45.0, 101325.0, 0, 0)))
              for seq in range(1, 60) for n in masters]
    errors = []

    def worker():
        try:
            for node, seq, message in sealed:
                opened = protocol.open_message(message, node, {1: masters[node]})
                assert (opened.node_id, opened.seq, opened.body.timestamp) == (node, seq, 1_700_000_000 + seq)
                other = "node-b" if node == "node-a" else "node-a"
                with pytest.raises(protocol.ProtocolError, match="does not verify"):
                    protocol.open_message(message, other, {1: masters[node]})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


@pytest.mark.parametrize("form", ["hex", "raw"])
def test_cli_decode_takes_the_key_from_a_file(form, tmp_path, capsys):
    v = SEALED[0]
    path = tmp_path / "payload.key"
    if form == "hex":
        path.write_text("  %s\n" % v["master"])
    else:
        path.write_bytes(bytes.fromhex(v["master"]))
    assert cli.main(["decode", "--key-file", str(path), "--node", v["node_id"], v["message"]]) == 0
    assert json.loads(capsys.readouterr().out) == v["decoded"]


def test_cli_decode_takes_the_key_from_the_fleet(tmp_path, capsys):
    from fieldnode.fleet import Fleet

    v = SEALED[0]
    fleet = tmp_path / "fleet"
    args = ["decode", "--fleet", str(fleet), "--node", v["node_id"], v["message"]]
    assert cli.main(args) == 2  # no key for the node yet
    err = capsys.readouterr().err
    assert "no payload key for node %s" % v["node_id"] in err and "--key-file" in err and err.count("\n") == 1
    Fleet(fleet).save_payload_key(v["node_id"], v["key_id"], bytes.fromhex(v["master"]))
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out) == v["decoded"]


def test_cli_decode_names_a_retired_or_revoked_key_and_opens_it_on_request(tmp_path, capsys):
    import datetime

    from fieldnode.fleet import Fleet, utcnow

    v = SEALED[0]
    fleet = Fleet(tmp_path / "fleet")
    fleet.save_payload_key(v["node_id"], v["key_id"], bytes.fromhex(v["master"]))
    fleet.save_payload_key(v["node_id"], v["key_id"] + 1, b"\x07" * 32)
    fleet.retire_payload_key(v["node_id"], v["key_id"], utcnow() - datetime.timedelta(seconds=1))
    args = ["decode", "--fleet", str(fleet.root), "--node", v["node_id"], v["message"]]
    for state in ("retired", "revoked"):
        if state == "revoked":
            fleet.revoke_payload_keys(v["node_id"])
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert "key id %d of node %s was %s" % (v["key_id"], v["node_id"], state) in err, err
        assert "--include-inactive" in err and "unknown" not in err and err.count("\n") == 1
        assert v["master"] not in err
        assert cli.main(args + ["--include-inactive"]) == 0
        assert json.loads(capsys.readouterr().out) == v["decoded"]
    # another node's damaged key file is no concern of this decode
    (fleet.root / "keys" / "other-node.json").write_text('{"1": {"key": "not hex"}}')
    assert cli.main(args + ["--include-inactive"]) == 0
    capsys.readouterr()
    assert cli.main(args[:1] + ["--key", v["master"], "--include-inactive"] + args[3:]) == 2
    assert "leave it out" in capsys.readouterr().err


def test_cli_decode_key_options_errors(tmp_path, capsys):
    v = SEALED[0]
    base = ["--node", v["node_id"], v["message"]]
    assert cli.main(["decode", "--key", v["master"], "--key-file", str(tmp_path / "k"), *base]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert cli.main(["decode", "--key-file", str(tmp_path / "missing"), *base]) == 2
    assert "cannot read it" in capsys.readouterr().err
    (tmp_path / "short").write_text("00" * 16)
    assert cli.main(["decode", "--key-file", str(tmp_path / "short"), *base]) == 2
    err = capsys.readouterr().err
    assert "16 bytes; the payload key is 32 bytes" in err and v["master"] not in err
