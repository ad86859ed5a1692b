"""A TCP relay on loopback between nodes and the broker, recording what crosses it.

The bench puts it in a node's path to look at the bytes on the wire (they must be TLS, never plaintext)
and, for fault injection, to cut (drop_connections) or hold connections: hold() is a blackhole, nothing is
read or forwarded (both ways, or only "up" from client to server, or "down") but every socket stays open,
new connections too, until release().
"""
import select
import socket
import threading


class TcpProxy:
    def __init__(self, target_host, target_port, record=True):
        self.target = (target_host, target_port)
        self.record = record
        self.captured = bytearray()  # client -> server and server -> client, in arrival order
        self._lock = threading.Lock()
        self._listener = None
        self._pairs = []
        self._stop = threading.Event()
        self._held = [False, False]  # up (client -> server), down: set by hold()
        self._threads = []

    @property
    def port(self):
        return self._listener.getsockname()[1]

    def start(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            t = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, a, b):
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                # a held side is not read: its bytes wait in the socket buffers, the sockets stay open
                up, down = self._held
                ready, _, _ = select.select([s for s, held in ((a, up), (b, down)) if not held], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.record:
                        with self._lock:
                            self.captured += data
                    peer[s].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def hold(self, direction="both"):
        """Blackhole every connection, open and new: "both", "up" (client -> server) or "down". A relay
        already waiting notices within 0.2 s."""
        if direction not in ("both", "up", "down"):
            raise ValueError("direction must be both, up or down, not %r" % (direction,))
        self._held = [direction != "down", direction != "up"]

    def release(self):
        """Forward again, starting with whatever the held sockets buffered meanwhile."""
        self._held = [False, False]

    def drop_connections(self):
        """Cut every relayed connection (both sides see a reset/close)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            except OSError:
                pass
            self._listener.close()
        self.drop_connections()
        for t in self._threads:
            t.join(2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
