"""A fault-injecting TCP relay on loopback: the bench puts one between each virtual node and the broker.

    with FaultProxy("127.0.0.1", broker.port) as link:
        node = rig.add_node("node-1", broker_port=link.port)
        link.drop()                         # reset every open connection (both ends see it end)
        link.refuse(True)                   # link down: new connections are reset as soon as they open
        link.blackhole("up")                # node -> broker bytes are held, sockets stay open
        link.latency(300, "down")           # broker -> node bytes arrive 300 ms late
        link.clear()                        # no fault

Directions are named from the node's side: "up" is node -> broker, "down" is broker -> node, "both" is
either. The faults act at the TCP byte-stream level, above the kernel:

- **drop** resets the open connections now; whatever the relay held or delayed for them is discarded,
  like bytes in flight on a link that went away.
- **refuse** accepts each new connection and resets it at once: the node's TLS handshake fails at once
  (what a node sees when the broker's host is up but nothing reaches the broker).
- **blackhole** stops forwarding in a direction without closing anything: the relay stops reading from
  that side, so the sender's writes first fill the socket buffers and then block, exactly as when TCP
  segments are lost and never acknowledged. New connections are accepted (the node's TCP connect
  succeeds) but their bytes are held too. Clearing it resumes forwarding of everything held, in order
  (the link came back before TCP gave up); combine it with `drop` for a link that comes back too late.
- **latency** delays every chunk in a direction by a fixed time, preserving order.

Counters (`connections`, `forwarded`, `drops`) let a scenario show that a fault took effect; with
`record=True` the relay also keeps every byte it saw (`captured`), to check what crosses the wire.
"""
import collections
import select
import socket
import struct
import threading
import time

UP, DOWN, BOTH = "up", "down", "both"
DIRECTIONS = (UP, DOWN, BOTH)
_TICK = 0.05  # how soon a relay notices a changed fault (its select timeout when idle)
_CHUNK = 65536


def _directions(direction):
    if direction not in DIRECTIONS:
        raise ValueError("direction must be one of %s, not %r" % (", ".join(DIRECTIONS), direction))
    return (UP, DOWN) if direction == BOTH else (direction,)


def _reset(sock):
    """Close with an RST rather than a FIN (SO_LINGER 0): the peer sees the connection torn down."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Pair:
    """One relayed connection: the node's socket, the broker's socket and the bytes in transit."""

    def __init__(self, client, upstream):
        self.src = {UP: client, DOWN: upstream}
        self.dst = {UP: upstream, DOWN: client}
        self.pending = {UP: collections.deque(), DOWN: collections.deque()}  # (due, bytes)
        self.dropped = threading.Event()


class FaultProxy:
    def __init__(self, target_host, target_port, name="", record=False):
        self.target = (target_host, target_port)
        self.name = name
        self.record = record
        self.captured = bytearray()  # with record=True: every byte received, both directions, in arrival order
        self.connections = 0  # accepted, including refused ones
        self.forwarded = {UP: 0, DOWN: 0}  # bytes passed on to the other side
        self.drops = 0  # connections cut by drop() or refused
        self._held = {UP: False, DOWN: False}
        self._delay = {UP: 0.0, DOWN: 0.0}
        self._refusing = False
        self._lock = threading.Lock()
        self._pairs = set()
        self._listener = None
        self._stop = threading.Event()
        self._threads = []

    @property
    def port(self):
        return self._listener.getsockname()[1]

    # -- faults ---------------------------------------------------------------------------------------

    def drop(self):
        """Reset every open connection now (the relay discards what it held for them)."""
        with self._lock:
            pairs = list(self._pairs)
            self.drops += len(pairs)
        for pair in pairs:
            pair.dropped.set()
            for s in (pair.src[UP], pair.src[DOWN]):
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes the relay's select(); it closes with an RST
                except OSError:
                    pass
        return len(pairs)

    def refuse(self, on=True):
        """While on, every new connection is reset as soon as it is accepted."""
        with self._lock:
            self._refusing = bool(on)

    def blackhole(self, direction=BOTH, on=True):
        """Hold (on) or release (off) the traffic in `direction`; connections stay open."""
        with self._lock:
            for d in _directions(direction):
                self._held[d] = bool(on)

    def latency(self, ms, direction=BOTH):
        """Delay every chunk in `direction` by `ms` milliseconds (0: no delay)."""
        if ms < 0:
            raise ValueError("latency must be >= 0 ms")
        with self._lock:
            for d in _directions(direction):
                self._delay[d] = ms / 1000.0

    def clear(self):
        """No fault: release held traffic, no delay, accept connections."""
        with self._lock:
            self._held = {UP: False, DOWN: False}
            self._delay = {UP: 0.0, DOWN: 0.0}
            self._refusing = False

    def set_target(self, host, port):
        """Where new connections go (open ones keep their broker)."""
        with self._lock:
            self.target = (host, port)

    @property
    def open_connections(self):
        with self._lock:
            return len(self._pairs)

    # -- relay ----------------------------------------------------------------------------------------

    def start(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._spawn(self._accept)
        return self

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True, name="faultproxy-" + self.name)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                refusing, target = self._refusing, self.target
                if refusing:
                    self.drops += 1
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                _reset(client)  # the broker is not there: the node sees what it would see without us
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            self._spawn(self._relay, pair)

    def _relay(self, pair):
        try:
            self._pump(pair)
        except OSError:
            pass  # a reset from either side ends the connection, as on a real link
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for s in (pair.src[UP], pair.src[DOWN]):
                _reset(s)

    def _pump(self, pair):
        while not self._stop.is_set() and not pair.dropped.is_set():
            with self._lock:
                held = dict(self._held)
            now = time.monotonic()
            # deliver what is due, in order, in every direction that is not held
            wait = _TICK
            for d in (UP, DOWN):
                q = pair.pending[d]
                while q and not held[d] and q[0][0] <= now:
                    data = q.popleft()[1]
                    with self._lock:
                        self.forwarded[d] += len(data)
                    pair.dst[d].sendall(data)
                if q and not held[d]:
                    wait = min(wait, max(0.0, q[0][0] - now))
            readable = [pair.src[d] for d in (UP, DOWN) if not held[d]]
            ready = select.select(readable, [], [], wait)[0] if readable else select.select([], [], [], wait)[0]
            for d in (UP, DOWN):
                if pair.src[d] in ready:
                    data = pair.src[d].recv(_CHUNK)
                    if not data:
                        self._flush(pair, d, held)  # the peer closed: pass on what it sent first
                        return
                    with self._lock:  # the delay in force now, not when this turn began
                        due = time.monotonic() + self._delay[d]
                        if self.record:
                            self.captured += data
                    pair.pending[d].append((due, data))

    def _flush(self, pair, direction, held):
        if pair.dropped.is_set() or held[direction]:
            return
        for _, data in pair.pending[direction]:
            pair.dst[direction].sendall(data)

    def stop(self):
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            except OSError:
                pass
            self._listener.close()
        self.drop()
        for t in self._threads:
            t.join(2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
