# Test stand-in for the umqtt.simple frozen into current ESP32 firmware, whose API differs from the PyPI
# 1.3.4 release: MQTTClient(..., ssl=<ssl.SSLContext>) with no ssl_params, and connect(timeout=...).
# Written for the fieldnode HIL bench: a small, complete-enough MQTT 3.1.1 client (QoS 0/1 publish,
# last will, ping) so node/link.py can be proven against a real broker through an SSLContext.
import socket
import struct

print("fieldnode-test: umqtt(context flavour) imported")


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.ssl = ssl
        self.keepalive = keepalive
        self.sock = None
        self.pid = 0
        self.cb = None
        self.lw = None
        self.flavour = "context"  # lets the test see which client the node used

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain, qos)

    def _str(self, s):
        return struct.pack("!H", len(s)) + s

    @staticmethod
    def _len(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _read(self, n):
        data = self.sock.read(n)
        if not data or len(data) != n:
            raise OSError(-1)
        return data

    def connect(self, clean_session=True, timeout=None):
        sock = socket.socket()
        sock.settimeout(timeout)
        sock.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if self.ssl:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.server)
        self.sock = sock
        flags = clean_session << 1
        payload = self._str(self.client_id.encode() if isinstance(self.client_id, str) else self.client_id)
        if self.lw:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | qos << 3 | retain << 5
            payload += self._str(topic) + self._str(msg)
        var = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", self.keepalive)
        body = var + payload
        sock.write(b"\x10" + self._len(len(body)) + body)
        resp = self._read(4)
        if resp[0] != 0x20 or resp[1] != 2:
            raise MQTTException("bad CONNACK")
        if resp[3]:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.write(b"\xe0\0")
        self.sock.close()

    def ping(self):
        self.sock.write(b"\xc0\0")

    def publish(self, topic, msg, retain=False, qos=0):
        body = self._str(topic)
        if qos:
            self.pid = self.pid % 0xFFFF + 1
            body += struct.pack("!H", self.pid)
        body += bytes(msg)
        self.sock.write(bytes((0x30 | qos << 1 | retain,)) + self._len(len(body)) + body)
        while qos == 1:
            if self.wait_msg() == 0x40:
                size, pid = self._read(1), self._read(2)
                if size == b"\x02" and struct.unpack("!H", pid)[0] == self.pid:
                    return

    def wait_msg(self):
        res = self.sock.read(1)
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":
            self._read(1)
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        # an incoming PUBLISH (the node subscribes to nothing; drain it)
        n = sh = 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << sh
            sh += 7
            if not b & 0x80:
                break
        data = self._read(n)
        if self.cb:
            tl = struct.unpack("!H", data[:2])[0]
            self.cb(data[2:2 + tl], data[2 + tl + (2 if op & 6 else 0):])
        return None

    def check_msg(self):
        self.sock.setblocking(False)
        try:
            return self.wait_msg()
        finally:
            self.sock.setblocking(True)
