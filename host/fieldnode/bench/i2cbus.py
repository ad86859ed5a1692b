"""Virtual I2C buses for the bench, served over TCP to nodes running on the MicroPython Unix port.

A device is any object with ``read_register(reg, n) -> bytes`` and ``write_register(reg, data)`` that may
raise :class:`Nack`. A :class:`Bus` maps 7-bit addresses to devices and serialises transactions like a real
bus; it also has machine.I2C's memory methods, so a driver can use it in-process without a socket.
:class:`I2CBusServer` serves many named buses; each node connection names its bus first.
The node side is ``firmware/node/hal/sockbus.py``.

Framing (integers big-endian). Request: a 5-byte header, then ``length`` data bytes for N and W::

    op u8 | addr u8 | reg u8 | length u16 | data
    N (0x4E)  name the bus for this connection (data: UTF-8 name); must be the first request
    R (0x52)  read ``length`` bytes starting at register ``reg`` of device ``addr``
    W (0x57)  write ``data`` to register ``reg`` of device ``addr``
    S (0x53)  scan; ``length`` is 16

Reply: a status byte; after OK to R or S, exactly ``length`` data bytes (for S, a 128-bit map: bit
``a & 7`` of byte ``a >> 3`` is set when address ``a`` acknowledged).

    0 OK | 1 NACK (no device at addr, or the device did not acknowledge) | 2 ERROR (bad request, no bus
    named yet, device fault); after ERROR the server closes the connection.

``length`` is at most 4096. An unknown bus name creates an empty bus (every address NACKs).
"""
import errno
import logging
import select
import socket
import struct
import threading

log = logging.getLogger(__name__)

OP_NAME, OP_READ, OP_WRITE, OP_SCAN = 0x4E, 0x52, 0x57, 0x53
OK, NACK, ERROR = 0, 1, 2
HEADER = struct.Struct(">BBBH")
MAX_LENGTH = 4096


class Nack(Exception):
    """The addressed device did not acknowledge (absent, or a fault injected by the bench)."""


class Bus:
    """Devices by 7-bit address. Transactions are atomic with respect to each other."""

    def __init__(self, name=""):
        self.name = name
        self._devices = {}
        self._lock = threading.RLock()

    def attach(self, addr, device):
        if not 0 <= addr <= 0x7F:
            raise ValueError(f"I2C address must be 0..0x7f, not {addr:#x}")
        with self._lock:
            self._devices[addr] = device

    def detach(self, addr):
        with self._lock:
            self._devices.pop(addr, None)

    def _device(self, addr):
        device = self._devices.get(addr)
        if device is None:
            raise Nack(f"no device at {addr:#04x} on bus {self.name!r}")
        return device

    def read(self, addr, reg, n):
        with self._lock:
            data = bytes(self._device(addr).read_register(reg, n))
        if len(data) != n:
            raise ValueError(f"device at {addr:#04x} returned {len(data)} bytes for a {n}-byte read")
        return data

    def write(self, addr, reg, data):
        with self._lock:
            self._device(addr).write_register(reg, bytes(data))

    def scan(self):
        """Addresses that acknowledge a zero-length read (no register side effects)."""
        found = []
        with self._lock:
            for addr in sorted(self._devices):
                try:
                    self.read(addr, 0, 0)
                except Nack:
                    continue
                found.append(addr)
        return found

    # machine.I2C-style methods, for drivers running in-process (NACK -> OSError(ENODEV) like machine.I2C).
    def readfrom_mem(self, addr, reg, n):
        try:
            return self.read(addr, reg, n)
        except Nack as exc:
            raise OSError(errno.ENODEV, str(exc)) from None

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = self.readfrom_mem(addr, reg, len(buf))

    def writeto_mem(self, addr, reg, buf):
        try:
            self.write(addr, reg, buf)
        except Nack as exc:
            raise OSError(errno.ENODEV, str(exc)) from None


def _recv_exact(conn, n):
    """n bytes, or None at a clean end of stream before the first byte."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if not k:
            if got:
                raise ConnectionError("connection closed inside a frame")
            return None
        got += k
    return bytes(buf)


class I2CBusServer:
    """TCP server for named buses on loopback. ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, host="127.0.0.1", port=0):
        self._bind = (host, port)
        self._buses = {}
        self._lock = threading.Lock()
        self._listener = None
        self._wake = None
        self._accepter = None
        self._conns = {}  # socket -> thread

    def bus(self, name):
        """The bus called ``name``, created empty on first use."""
        with self._lock:
            if name not in self._buses:
                self._buses[name] = Bus(name)
            return self._buses[name]

    @property
    def address(self):
        if self._listener is None:
            raise RuntimeError("I2CBusServer is not started")
        return self._listener.getsockname()[:2]

    @property
    def port(self):
        return self.address[1]

    def start(self):
        if self._listener is not None:
            raise RuntimeError("I2CBusServer already started")
        listener = socket.create_server(self._bind)
        self._wake = socket.socketpair()
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept_loop, name="i2cbus-accept", daemon=True)
        self._accepter.start()
        return self

    def stop(self, timeout=5.0):
        """Close the listener and every connection (clients see the stream end), then join the threads."""
        if self._listener is None:
            return
        self._wake[1].send(b"x")
        self._accepter.join(timeout)
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        for _, thread in conns:
            thread.join(timeout)
        self._listener.close()
        for s in self._wake:
            s.close()
        self._listener = self._wake = self._accepter = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        listener, wake = self._listener, self._wake[0]
        while True:
            readable, _, _ = select.select([listener, wake], [], [])
            if wake in readable:
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), name="i2cbus-conn", daemon=True)
            with self._lock:
                self._conns[conn] = thread
            thread.start()

    def _serve(self, conn):
        try:
            with conn:
                bus = None
                while True:
                    header = _recv_exact(conn, HEADER.size)
                    if header is None:
                        return
                    op, addr, reg, n = HEADER.unpack(header)
                    data = b""
                    if n > MAX_LENGTH or op not in (OP_NAME, OP_READ, OP_WRITE, OP_SCAN):
                        conn.sendall(bytes((ERROR,)))
                        return
                    if op in (OP_NAME, OP_WRITE):
                        data = _recv_exact(conn, n) if n else b""
                        if data is None:
                            return
                    if op == OP_NAME:
                        bus = self.bus(data.decode("utf-8", "replace"))
                        reply = bytes((OK,))
                    elif bus is None:
                        conn.sendall(bytes((ERROR,)))
                        return
                    else:
                        reply = self._transact(bus, op, addr, reg, n, data)
                    conn.sendall(reply)
                    if reply[0] == ERROR:
                        return
        except OSError:
            pass  # the node went away, or stop() shut the connection down
        finally:
            with self._lock:
                self._conns.pop(conn, None)

    @staticmethod
    def _transact(bus, op, addr, reg, n, data):
        try:
            if op == OP_READ:
                return bytes((OK,)) + bus.read(addr, reg, n)
            if op == OP_WRITE:
                bus.write(addr, reg, data)
                return bytes((OK,))
            if n != 16:
                return bytes((ERROR,))
            bitmap = bytearray(16)
            for a in bus.scan():
                bitmap[a >> 3] |= 1 << (a & 7)
            return bytes((OK,)) + bitmap
        except Nack:
            return bytes((NACK,))
        except Exception:  # a device bug must not take the bus down; report it and tell the node
            log.exception("bus %r: device %#04x failed on op %#04x reg %#04x", bus.name, addr, op, reg)
            return bytes((ERROR,))
