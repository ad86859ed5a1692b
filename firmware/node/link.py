# MQTT 3.1.1 over mutual TLS, QoS 1, with every network wait bounded by broker.timeout_s.
#
# umqtt.simple frames PUBLISH and reads the PUBACK, in either flavour: micropython-lib's 1.3.x (PyPI, on the
# Unix port) or the one frozen into current ESP32 firmware (ssl=<SSLContext>, connect(timeout=)). Neither
# bounds every wait (1.3.x sets no timeout at all, both put the socket back to blocking after each read),
# so this module owns the socket: it opens it with a timeout before the TLS handshake, sends CONNECT
# itself, and hands umqtt a wrapper whose reads and writes fail instead of blocking past the timeout and
# which ignores umqtt's setblocking(True). A PUBACK or PINGRESP that does not come in time raises OSError
# (ETIMEDOUT) and closes the link: the caller keeps the message queued and reconnects later.
#
# Not bounded: the DNS lookup (MicroPython's getaddrinfo takes no timeout; lwIP gives up by itself).
import socket
import ssl
import struct

from micropython import const

from node.timing import ticks_diff, ticks_ms

try:
    from errno import ECONNRESET, ETIMEDOUT
except ImportError:  # pragma: no cover
    ECONNRESET, ETIMEDOUT = 104, 110

_WILL_FLAGS = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retained
_IPPROTO_TCP = const(6)  # the same numbers on lwIP (ESP32) and Linux; MicroPython's socket module names neither
_TCP_NODELAY = const(1)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class LinkError(Exception):
    pass


def _no_delay(sock):
    # umqtt.simple writes a PUBLISH in five pieces. With Nagle's algorithm on, the later pieces wait for the
    # broker to acknowledge the first, which it delays (~40 ms on Linux) until the packet is whole: every
    # publish would take that long. Best effort: a stack without the option just keeps Nagle.
    try:
        sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def _field(s):
    return struct.pack(">H", len(s)) + s


def connect_packet(client_id, keepalive_s, will_topic, will_msg):
    """The CONNECT packet: MQTT 3.1.1, clean session, a retained QoS 1 last will."""
    body = (b"\x00\x04MQTT\x04" + bytes((_WILL_FLAGS,)) + struct.pack(">H", keepalive_s)
            + _field(client_id) + _field(will_topic) + _field(will_msg))
    n = len(body)
    head = bytearray(b"\x10")
    while True:
        b = n & 0x7F
        n >>= 7
        head.append(b | 0x80 if n else b)
        if not n:
            return bytes(head) + body


class Bounded:
    """A stream for umqtt.simple over a socket whose timeout was set before the TLS handshake: read(n) gives
    exactly n bytes or raises, write() sends everything or raises, setblocking() is ignored."""

    def __init__(self, sock):
        self._s = sock

    def read(self, n):
        data = self._s.read(n)
        if data is None:
            raise OSError(ETIMEDOUT, "no answer from the broker in time")
        if len(data) != n:
            raise OSError(ECONNRESET, "the broker closed the connection")
        return data

    def write(self, buf, n=None):
        if n is not None and n < len(buf):
            buf = memoryview(buf)[:n]
        sent = self._s.write(buf)
        if sent is not None and sent != len(buf):
            raise OSError(ETIMEDOUT, "the broker does not take data in time")
        return sent

    def setblocking(self, flag):
        pass  # umqtt.simple sets blocking after each read: the timeout stays

    def close(self):
        self._s.close()


class Link:
    def __init__(self, cfg):
        self._cfg = cfg
        b = cfg.broker
        base = "fieldnode/" + cfg.node_id
        self.reading_topic = (base + "/reading").encode()
        self.alarm_topic = (base + "/alarm").encode()
        self.status_topic = (base + "/status").encode()
        self._timeout = b.get("timeout_s", 5)
        self._keepalive_ms = b.get("keepalive_s", 60) * 1000
        self._server_name = b.get("server_name") or b["host"]
        self._packet = None
        self._ctx = None
        self._last_tx = 0
        self.client = None

    def _material(self):
        files = self._cfg.files
        try:
            return _read(files["key"]), _read(files["cert"]), _read(files["ca"])
        except OSError as exc:
            raise LinkError("TLS files missing (%s): re-provision the node" % exc)

    def prepare(self):
        """Make the TLS context and load umqtt.simple now, at start-up, while the heap is still in one piece:
        the context is one block of a few KB (on the Unix port), which a heap fragmented by hours of cycles
        may no longer have. Whatever fails here is left for connect() to report (and retry)."""
        try:
            self._context()
            import umqtt.simple  # noqa: F401  (its code loaded now; connect() imports it by name)
        except (LinkError, OSError, ValueError, MemoryError, ImportError):
            pass

    def _context(self):
        if self._ctx is None and hasattr(ssl, "SSLContext"):
            key, cert, ca = self._material()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(cadata=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._ctx = ctx  # parsed once, kept: no PEM/DER parsing on every reconnect
        return self._ctx

    def _tls(self, raw):
        if self._context() is not None:
            return self._ctx.wrap_socket(raw, server_hostname=self._server_name)
        key, cert, ca = self._material()  # older firmware: the module-level call of the 1.3.x era
        return ssl.wrap_socket(raw, key=key, cert=cert, cadata=ca, cert_reqs=ssl.CERT_REQUIRED,
                               server_hostname=self._server_name)

    def connect(self, status=b"online"):
        """Open the link and publish `status` (retained) on the status topic; raises on any failure."""
        from umqtt.simple import MQTTClient  # here, so the module imports where umqtt is absent (CPython)

        self.close()
        b = self._cfg.broker
        if self._packet is None:
            self._packet = connect_packet(self._cfg.node_id.encode(), b.get("keepalive_s", 60),
                                          self.status_topic, b"offline")
        ai = socket.getaddrinfo(b["host"], b["port"], 0, socket.SOCK_STREAM)[0]
        raw = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            raw.settimeout(self._timeout)
            _no_delay(raw)
            raw.connect(ai[-1])
            sock = Bounded(self._tls(raw))
        except BaseException:
            raw.close()
            raise
        try:
            sock.write(self._packet)
            ack = sock.read(4)
            if ack[0] != 0x20 or ack[1] != 2:
                raise LinkError("no CONNACK: not an MQTT broker")
            if ack[3]:
                raise LinkError("broker refused the connection (CONNACK code %d)" % ack[3])
            client = MQTTClient(self._cfg.node_id, b["host"], b["port"], keepalive=b.get("keepalive_s", 60))
            client.sock = sock
            self.client = client
            self._last_tx = ticks_ms()
            self.publish(self.status_topic, status, True)
        except BaseException:
            self.client = None
            sock.close()
            raise

    @property
    def up(self):
        return self.client is not None

    def publish(self, topic, msg, retain=False):
        """QoS 1 publish; returns once the broker acknowledged it (PUBACK). Raises (and closes the link) when
        the link fails or the PUBACK does not come within the timeout."""
        client = self.client
        if client is None:
            raise LinkError("not connected")
        if client.pid >= 0xFFFF:
            client.pid = 0  # umqtt.simple 1.3.x would send packet id 65536 and wait for it forever
        try:
            client.publish(topic, msg, retain, 1)
        except BaseException:
            self.close()
            raise
        self._last_tx = ticks_ms()

    def ping_due_ms(self):
        """Milliseconds until the link has been idle for half the keepalive (when ping() is due)."""
        if not self._keepalive_ms or self.client is None:
            return 1 << 30
        return self._keepalive_ms // 2 - ticks_diff(ticks_ms(), self._last_tx)

    def ping(self):
        """PINGREQ, and wait (bounded) for the PINGRESP; on anything else the link is closed."""
        client = self.client
        if client is None:
            raise LinkError("not connected")
        try:
            client.ping()
            resp = client.sock.read(2)
            if resp[0] != 0xD0 or resp[1]:
                raise LinkError("packet 0x%02x instead of PINGRESP" % resp[0])
        except BaseException:
            self.close()
            raise
        self._last_tx = ticks_ms()

    def close(self):
        """Drop the connection without a DISCONNECT: the broker then publishes the last will (offline)."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.sock.close()
            except Exception:  # the socket may already be gone; nothing else to release
                pass
