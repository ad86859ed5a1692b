# machine.I2C's memory methods over TCP, to the bench's emulated devices (fieldnode.bench.i2cbus, which
# documents the framing). Used by the node on the Unix port; runs on CPython too (host tests).
# Errors as machine.I2C raises them: NACK -> OSError(ENODEV), no reply in time -> OSError(ETIMEDOUT).
# The socket opens on first use and again after any failure; nothing touches the network before that.
import socket
import struct

from micropython import const

try:
    from errno import ECONNRESET, EIO, ENODEV, ETIMEDOUT, EAGAIN
except ImportError:  # pragma: no cover
    ECONNRESET, EIO, ENODEV, ETIMEDOUT, EAGAIN = 104, 5, 19, 110, 11

_OP_NAME = const(0x4E)
_OP_READ = const(0x52)
_OP_WRITE = const(0x57)
_OP_SCAN = const(0x53)
_OK = const(0)
_NACK = const(1)
_HEADER = const(5)
_INLINE = const(32)  # writes up to this size go out in the preallocated frame


class SocketI2C:
    def __init__(self, host, port, bus_name, timeout_s=2):
        self._host = host
        self._port = port
        self._name = bus_name.encode() if isinstance(bus_name, str) else bytes(bus_name)
        self._timeout = timeout_s
        self._sock = None
        self._frame = bytearray(_HEADER + _INLINE)  # header, then inline write data
        self._status = bytearray(1)
        # Made once: a transaction on the sensor's bus allocates nothing (memoryview slices and bound
        # methods are objects on MicroPython).
        self._whole = memoryview(self._frame)
        self._header = self._whole[:_HEADER]
        self._inline = self._header  # the frame of the last inline write's size (they repeat)
        self._readinto = None

    def readfrom_mem_into(self, addr, reg, buf):
        self._request(_OP_READ, addr, reg, len(buf), None, buf)

    def readfrom_mem(self, addr, reg, n):
        buf = bytearray(n)
        self._request(_OP_READ, addr, reg, n, None, buf)
        return bytes(buf)

    def writeto_mem(self, addr, reg, buf):
        self._request(_OP_WRITE, addr, reg, len(buf), buf, None)

    def scan(self):
        found = bytearray(16)
        self._request(_OP_SCAN, 0, 0, 16, None, found)
        return [a for a in range(128) if found[a >> 3] & (1 << (a & 7))]

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._readinto = None

    def _request(self, op, addr, reg, n, data, into):
        if self._sock is None:
            self._connect()
        try:
            self._send(op, addr, reg, n, data)
            self._recv_into(self._status, 1)
            status = self._status[0]
            if status == _OK:
                if into is not None:
                    self._recv_into(into, n)
                return
        except OSError as exc:
            self._fail(exc, "request")
        if status == _NACK:
            raise OSError(ENODEV, "i2c 0x%02x: NACK" % addr)
        self.close()  # the bench closes the connection after an error reply
        raise OSError(EIO, "i2c bench bus: error reply to op 0x%02x at 0x%02x" % (op, addr))

    def _connect(self):
        ai = socket.getaddrinfo(self._host, self._port, 0, socket.SOCK_STREAM)[0]
        self._sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            self._sock.settimeout(self._timeout)
            self._sock.connect(ai[-1])
            self._readinto = getattr(self._sock, "recv_into", None) or self._sock.readinto  # CPython / MicroPython
            self._send(_OP_NAME, 0, 0, len(self._name), self._name)
            self._recv_into(self._status, 1)
        except OSError as exc:
            self._fail(exc, "connect")
        if self._status[0] != _OK:
            self.close()
            raise OSError(EIO, "i2c bench bus %s:%s refused bus name %r" % (self._host, self._port, self._name))

    def _fail(self, exc, what):
        # Drop the connection (a late reply would be taken for the next one's) and report timeouts as
        # ETIMEDOUT: MicroPython says ETIMEDOUT or EAGAIN, CPython's socket.timeout has no errno.
        self.close()
        code = getattr(exc, "errno", None)
        if code is None or code == EAGAIN or code == ETIMEDOUT:
            raise OSError(ETIMEDOUT, "i2c bench bus %s:%s: %s timed out after %ss"
                          % (self._host, self._port, what, self._timeout))
        raise exc

    def _send(self, op, addr, reg, n, data):
        frame = self._frame
        struct.pack_into(">BBBH", frame, 0, op, addr, reg, n)
        if data is None:
            self._sock.sendall(self._header)
        elif n <= _INLINE:
            frame[_HEADER:_HEADER + n] = data
            if len(self._inline) != _HEADER + n:
                self._inline = self._whole[:_HEADER + n]
            self._sock.sendall(self._inline)
        else:
            self._sock.sendall(bytes(frame[:_HEADER]) + bytes(data))

    def _recv_into(self, buf, n):
        readinto = self._readinto
        got = readinto(buf) if n == len(buf) else 0  # all of it in one go, almost always
        view = None
        while got is not None and got < n:
            if view is None:
                view = memoryview(buf)
            k = readinto(view[got:n])
            if k is None:
                break
            if not k:
                raise OSError(ECONNRESET, "i2c bench bus %s:%s closed the connection" % (self._host, self._port))
            got += k
        if got is None or got < n:  # MicroPython's readinto answers None when the timeout passed
            raise OSError(ETIMEDOUT, "timed out")
