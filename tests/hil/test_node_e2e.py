"""The walking skeleton end to end: virtual nodes on the MicroPython Unix port, emulated BME280s, a real
mosquitto with mutual TLS, and the host's verifying monitor."""
import ssl

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.serialization import load_der_private_key

from fieldnode import pki, protocol
from fieldnode.bench.collector import Collector
from fieldnode.bench.faults import FaultProxy
from fieldnode.bench.rig import Rig
from fieldnode.bench.vnode import VirtualNode

from ingest_helpers import stolen

THRESHOLDS = {"temperature_c": {"low": 15.0, "high": 25.0, "hysteresis": 0.5, "debounce": 2}}
ENV = {"temperature_c": 20.0, "humidity_rh": 45.0, "pressure_pa": 101325.0}
# The sensor's resolution as the wire carries it (0.01 units) plus the emulator's inversion error.
TOL = {"temperature_c": 0.02, "humidity_rh": 0.05, "pressure_pa": 1.0}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    # node-3 and rogue-1 are in the broker's ACL but started by the tests that need them.
    r = Rig(tmp_path_factory.mktemp("rig"), ["node-1", "node-2", "node-3", "rogue-1"], interval_s=0.25,
            thresholds=THRESHOLDS, environment=ENV, autostart=["node-1", "node-2"])
    with r:
        yield r


@pytest.fixture(scope="module")
def seen(rig):
    c = Collector()
    with rig.monitor(**c.callbacks()):
        yield c


def readings(c, node):
    return [m for m in c.of(node, "reading")]


def matches(opened, env):
    d = opened.as_dict()
    return all(d[k] is not None and abs(d[k] - v) <= TOL[k] for k, v in env.items())


def wait_readings(c, node, n, after_seq=0, timeout=20):
    """Wait for n readings of `node` with seq > after_seq; return them."""
    return c.wait_for(lambda c: (lambda r: r if len(r) >= n else None)(
        [m for m in readings(c, node) if m.seq > after_seq]), timeout, f"{n} readings from {node}")


def test_both_nodes_publish_sealed_readings_that_verify(rig, seen):
    for node in ("node-1", "node-2"):
        got = wait_readings(seen, node, 3)
        assert [m.seq for m in got] == sorted(m.seq for m in got)
        for m in got:
            payload = seen.payloads[(node, m.seq)]
            assert len(payload) == 58
            # the values are not in the payload in the clear
            assert m.body.encode() not in payload
            with pytest.raises(protocol.ProtocolError):
                protocol.open_message(payload, node, {1: bytes(32)})  # wrong key
    assert ("node-1", "online") in seen.statuses and ("node-2", "online") in seen.statuses
    assert not seen.rejected


def test_no_plaintext_on_the_wire(rig, seen):
    with FaultProxy("127.0.0.1", rig.broker.port, record=True) as proxy:
        node = rig.add_node("node-3", broker_port=proxy.port)
        wait_readings(seen, "node-3", 3)
        node.stop()
    wire = bytes(proxy.captured)
    assert wire[:1] == b"\x16"  # a TLS handshake record opens the connection
    assert b"fieldnode/node-3" not in wire and b"MQTT" not in wire
    for m in readings(seen, "node-3"):
        assert seen.payloads[("node-3", m.seq)] not in wire


def test_readings_follow_the_emulated_environment(rig, seen):
    env = {"temperature_c": 23.37, "humidity_rh": 52.1, "pressure_pa": 99876.5}
    rig.sensors["node-1"].set_environment(**env)
    first = seen.wait_for(lambda c: next((m for m in readings(c, "node-1") if matches(m, env)), None),
                          what="a node-1 reading at the new environment")
    for m in wait_readings(seen, "node-1", 4, after_seq=first.seq):
        assert matches(m, env), m.as_dict()
    rig.sensors["node-1"].set_environment(**ENV)


def test_each_threshold_crossing_gives_exactly_one_alarm(rig, seen):
    node, sensor = "node-2", rig.sensors["node-2"]
    wait_readings(seen, node, 1)
    # (temperature, alarm bits that must hold once it settled): high with hysteresis, then low
    steps = [(27.0, 0b10), (24.8, 0b10), (24.0, 0), (10.0, 0b01), (15.3, 0b01), (20.0, 0)]
    for temp, bits in steps:
        before = max(m.seq for m in readings(seen, node))
        sensor.set_environment(temperature_c=temp)
        # (the node refuses the first sample after an instant step as implausible: temperature_c None)
        first = seen.wait_for(lambda c: next((m for m in readings(c, node) if m.seq > before
                                              and m.body.temperature_c is not None
                                              and abs(m.body.temperature_c - temp) <= 0.02), None),
                              what=f"{node} at {temp} °C")
        # debounce is 2: from the third reading at this temperature on, the alarm state has settled
        settled = wait_readings(seen, node, 5, after_seq=first.seq)[2:]
        assert all(m.body.alarm_bits == bits for m in settled), (temp, bits, [m.as_dict() for m in settled])
    alarms = [(a.body.channel, a.body.raised, a.body.high, a.body.limit) for a in seen.of(node, "alarm")]
    assert alarms == [(0, True, True, 25.0), (0, False, True, 25.0), (0, True, False, 15.0), (0, False, False, 15.0)]


def test_sensor_faults_give_status_flags_not_numbers_and_recover(rig, seen):
    node, sensor = "node-1", rig.sensors["node-1"]
    wait_readings(seen, node, 1)

    def flagged(flag, after):
        return seen.wait_for(lambda c: next((m for m in readings(c, node)
                                             if m.seq > after and flag in m.as_dict()["sensor_status"]), None),
                             what=f"a {node} reading flagged {flag}")

    def no_numbers(m):
        d = m.as_dict()
        return d["temperature_c"] is None and d["humidity_rh"] is None and d["pressure_pa"] is None

    # The bus stops answering (loose connector): flagged readings carry no numbers.
    sensor.nack = True
    bad = flagged("read_error", readings(seen, node)[-1].seq)
    assert no_numbers(bad), bad.as_dict()
    # It comes back as another part (a BMP280 fitted by mistake): flagged, still no numbers.
    sensor.chip_id = 0x58
    sensor.nack = False
    bad = flagged("wrong_chip_id", bad.seq)
    assert no_numbers(bad), bad.as_dict()
    # The right part again: the node recovers by itself.
    sensor.chip_id = 0x60
    seen.wait_for(lambda c: next((m for m in readings(c, node)
                                  if m.seq > bad.seq and not m.body.sensor_status and matches(m, ENV)), None),
                  what=f"{node} recovering")


def test_node_with_a_certificate_from_another_ca_is_refused(rig, seen):
    rogue_ca = pki.make_ca("rogue CA")
    node = rig.add_node("rogue-1", issuer=rogue_ca)
    node.wait_for_line(r"broker unreachable")
    node.stop()
    assert not [s for s in seen.statuses if s[0] == "rogue-1"]
    assert not seen.of("rogue-1")
    assert "u'rogue-1'" not in rig.broker.log_text()  # mosquitto never saw it as an MQTT user


def _node_publisher(rig, node_id):
    """A paho client holding node_id's own certificate and key (what an attacker with a stolen node has)."""
    folder = rig.nodes[node_id].folder
    key = load_der_private_key((folder / "node.key.der").read_bytes(), None)
    pem_key = folder.parent / f"{node_id}-key.pem"
    pki.write_key(pem_key, key)
    pem_cert = folder.parent / f"{node_id}-cert.pem"
    pem_cert.write_bytes(ssl.DER_cert_to_PEM_cert((folder / "node.der").read_bytes()).encode())
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=node_id + "-attacker")
    ctx = ssl.create_default_context(cafile=str(rig.fleet.ca_cert))
    ctx.load_cert_chain(str(pem_cert), str(pem_key))
    client.tls_set_context(ctx)
    client.connect("127.0.0.1", rig.broker.port)
    client.loop_start()
    return client


def test_tampered_payload_is_rejected(rig, seen):
    node = "node-1"
    original = seen.payloads[(node, readings(seen, node)[-1].seq)]
    tampered = bytearray(original)
    tampered[30] ^= 0x01  # one bit of the ciphertext
    with stolen(rig, node):
        client = _node_publisher(rig, node)
        try:
            client.publish(f"fieldnode/{node}/reading", bytes(tampered), qos=1).wait_for_publish(10)
            got = seen.wait_for(lambda c: [r for r in c.rejected if r[3] == bytes(tampered)],
                                what="the rejection")
        finally:
            client.loop_stop()
            client.disconnect()
    assert got[0][0] == node and got[0][2] == "bad-tag"


def test_bad_config_leaves_the_node_at_the_repl_without_a_traceback(tmp_path):
    (tmp_path / "config.json").write_text('{"node_id": "node-1", "key_id": 1}')
    node = VirtualNode("node-bad", tmp_path).start()
    try:
        line = node.wait_for_line(r"config error: (.*)").group(1)
        assert "broker" in line or "board" in line
        node.proc.wait(10)
        assert not any("Traceback" in l for l in node.lines), node.lines
    finally:
        node.stop()
