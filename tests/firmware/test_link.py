# node.link without a network: the CONNECT packet, the bounded stream umqtt.simple reads and writes through,
# PUBLISH/PUBACK and PINGREQ/PINGRESP against a scripted socket (what the broker "says" is queued bytes; an
# empty queue is a timeout). The real broker, TLS and cut or blackholed links: tests/hil/test_link_resilience.py.
# Plain asserts: runs under pytest (CPython) and on the Unix port (mpyunit.py); the umqtt.simple parts only
# where umqtt.simple imports (the Unix port).
from node.config import parse
from node.link import Bounded, Link, LinkError, connect_packet

try:
    from umqtt.simple import MQTTClient
except ImportError:  # CPython: umqtt.simple needs MicroPython's usocket
    MQTTClient = None

_BOARD = {"name": "unix", "platform": "unix", "chip": None, "i2c": {"id": 0, "scl": None, "sda": None, "freq": 400000},
          "sensor": {"family": "bme280", "address": 118}, "status_led": None}


class ScriptedSocket:
    """Reads come from `replies` (bytes objects, handed out as asked); nothing left is a timeout, like a
    socket with a timeout on MicroPython (OSError ETIMEDOUT) — or None with `none_on_empty`."""

    def __init__(self, *replies, none_on_empty=False):
        self.buf = b"".join(replies)
        self.written = b""
        self.none_on_empty = none_on_empty
        self.closed = False
        self.blocking_calls = 0

    def read(self, n):
        if not self.buf:
            if self.none_on_empty:
                return None
            raise OSError(110, "ETIMEDOUT")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def write(self, data):
        self.written += bytes(data)
        return len(data)

    def setblocking(self, flag):
        self.blocking_calls += 1

    def close(self):
        self.closed = True


def test_connect_packet():
    p = connect_packet(b"n", 60, b"fieldnode/n/status", b"offline")
    body = (b"\x00\x04MQTT\x04\x2e\x00\x3c" + b"\x00\x01n" + b"\x00\x12fieldnode/n/status" + b"\x00\x07offline")
    assert p == b"\x10" + bytes((len(body),)) + body
    long = connect_packet(b"x" * 200, 0, b"t", b"m")  # remaining length in two bytes
    assert long[0] == 0x10 and long[1] & 0x80 and (long[1] & 0x7F) + (long[2] << 7) == len(long) - 3


def test_bounded_reads_exactly_or_fails():
    s = Bounded(ScriptedSocket(b"abc", none_on_empty=True))
    assert s.read(2) == b"ab"
    try:
        s.read(2)  # one byte, then the peer closed
    except OSError as exc:
        assert exc.args[0] == 104
    else:
        raise AssertionError("a short read passed")
    try:
        s.read(1)
    except OSError as exc:
        assert exc.args[0] == 110
    else:
        raise AssertionError("a timed out read passed")


def test_bounded_writes_and_ignores_setblocking():
    raw = ScriptedSocket()
    s = Bounded(raw)
    s.write(b"\x30\x00\x00\x00", 2)
    s.write(b"xyz")
    s.setblocking(True)
    assert raw.written == b"\x30\x00xyz" and raw.blocking_calls == 0


def link(keepalive=60):
    cfg = parse({"node_id": "n", "key_id": 1, "broker": {"host": "h", "keepalive_s": keepalive}, "board": _BOARD})
    return Link(cfg)


class FakeClient:
    def __init__(self, sock):
        self.sock = sock
        self.pid = 0
        self.published = []

    def publish(self, topic, msg, retain=False, qos=0):
        self.published.append((topic, bytes(msg), retain, qos, self.pid))
        self.pid += 1

    def ping(self):
        self.sock.write(b"\xc0\x00")


def test_publish_is_qos1_and_packet_ids_wrap():
    lk = link()
    c = FakeClient(Bounded(ScriptedSocket()))
    lk.client = c
    c.pid = 0xFFFF
    lk.publish(lk.reading_topic, b"m")
    assert c.published == [(b"fieldnode/n/reading", b"m", False, 1, 0)]
    lk.publish(lk.status_topic, b"online", True)
    assert c.published[-1][2:4] == (True, 1)


def test_ping_waits_for_pingresp_and_anything_else_closes_the_link():
    lk = link(keepalive=10)
    raw = ScriptedSocket(b"\xd0\x00")
    lk.client = FakeClient(Bounded(raw))
    lk.ping()
    assert raw.written == b"\xc0\x00" and lk.up
    assert 4000 < lk.ping_due_ms() <= 5000  # half the keepalive after the last packet
    for replies in ((), (b"\x40\x02\x00\x01",)):  # nothing within the timeout; a stray PUBACK
        raw = ScriptedSocket(*replies)
        lk.client = FakeClient(Bounded(raw))
        try:
            lk.ping()
        except (OSError, LinkError):
            pass
        else:
            raise AssertionError("ping passed without a PINGRESP")
        assert not lk.up and raw.closed
    try:
        lk.publish(lk.reading_topic, b"m")
    except LinkError:
        pass
    else:
        raise AssertionError("published on a closed link")
    assert link(keepalive=0).ping_due_ms() > 10 ** 8


def test_umqtt_publish_through_the_bounded_stream():
    if MQTTClient is None:
        return
    lk = link()
    raw = ScriptedSocket(b"\x40\x02\x00\x01")  # the PUBACK for packet id 1
    client = MQTTClient("n", "h", 8883)
    client.sock = Bounded(raw)
    lk.client = client
    lk.publish(lk.reading_topic, b"\x01" * 58)
    assert raw.written[:1] == b"\x32" and raw.written.endswith(b"\x01" * 58)  # PUBLISH, QoS 1
    assert raw.blocking_calls == 0  # umqtt's setblocking(True) never reached the socket
    assert lk.up
    # no PUBACK in time: publish fails instead of hanging, and the link is closed
    try:
        lk.publish(lk.reading_topic, b"\x01" * 58)
    except OSError as exc:
        assert exc.args[0] == 110
    else:
        raise AssertionError("a publish without PUBACK returned")
    assert not lk.up and raw.closed
