"""The bench's fault-injecting relay (fieldnode.bench.faults) against a plain TCP echo server on loopback."""
import select
import socket
import threading
import time

import pytest

from fieldnode.bench.faults import FaultProxy

QUIET = 0.3  # how long "nothing arrives" is watched for: a bounded observation, not a synchronisation


class Upstream:
    """A TCP server that records what each connection sends and echoes it back unless told not to."""

    def __init__(self, echo=True):
        self.echo = echo
        self.received = bytearray()
        self.conns = []
        self._cond = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self):
        return self.listener.getsockname()[1]

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            while data := conn.recv(65536):
                with self._cond:
                    self.received += data
                    self._cond.notify_all()
                if self.echo:
                    conn.sendall(data)
        except OSError:
            pass

    def wait_received(self, n, timeout=5):
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= n, timeout), bytes(self.received)
            return bytes(self.received)

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def proxy(upstream):
    with FaultProxy("127.0.0.1", upstream.port, name="test") as p:
        yield p


def connect(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return s


def recv_exactly(sock, n, timeout=5):
    sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def nothing_readable(sock, within=QUIET):
    return not select.select([sock], [], [], within)[0]


def closed_by_peer(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_relays_both_ways_and_counts(proxy, upstream):
    with connect(proxy) as s:
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"
    assert upstream.wait_received(5) == b"hello"
    assert proxy.connections == 1
    assert proxy.forwarded == {"up": 5, "down": 5}


def test_drop_resets_open_connections_and_new_ones_work(proxy, upstream):
    s = connect(proxy)
    s.sendall(b"a")
    assert recv_exactly(s, 1) == b"a"
    assert proxy.drop() == 1
    assert closed_by_peer(s)
    s.close()
    with connect(proxy) as s2:
        s2.sendall(b"b")
        assert recv_exactly(s2, 1) == b"b"
    assert proxy.connections == 2 and proxy.drops == 1


def test_refuse_resets_each_new_connection_until_cleared(proxy, upstream):
    proxy.refuse(True)
    try:
        with connect(proxy) as s:
            assert closed_by_peer(s)
    except ConnectionResetError:
        pass  # reset before connect() even returned
    assert proxy.drops == 1
    proxy.refuse(False)
    with connect(proxy) as s:
        s.sendall(b"back")
        assert recv_exactly(s, 4) == b"back"
    assert upstream.received == b"back"  # nothing of the refused connection got through


def test_blackhole_holds_traffic_keeps_the_socket_and_releases_it_in_order(proxy, upstream):
    with connect(proxy) as s:
        s.sendall(b"1")
        assert recv_exactly(s, 1) == b"1"
        proxy.blackhole("both")
        s.sendall(b"234")
        assert nothing_readable(s)
        assert upstream.received == b"1"  # held before the broker
        assert proxy.open_connections == 1  # the connection is still there
        proxy.blackhole("both", on=False)
        assert recv_exactly(s, 3) == b"234"
    assert upstream.wait_received(4) == b"1234"


def test_blackhole_down_only_delivers_up_but_holds_the_answers(proxy, upstream):
    with connect(proxy) as s:
        proxy.blackhole("down")
        s.sendall(b"ping")
        assert upstream.wait_received(4) == b"ping"  # the broker got it...
        assert nothing_readable(s)  # ...its answer (the PUBACK) does not come back
        proxy.clear()
        assert recv_exactly(s, 4) == b"ping"


def test_blackhole_up_only_holds_what_the_node_sends(upstream):
    upstream.echo = False
    with FaultProxy("127.0.0.1", upstream.port) as p, connect(p) as s:
        p.blackhole("up")
        s.sendall(b"data")
        time.sleep(QUIET)  # a bounded observation window: nothing may arrive in it
        assert upstream.received == b""
        upstream.conns[0].sendall(b"down")  # the other direction still flows
        assert recv_exactly(s, 4) == b"down"
        p.blackhole("up", on=False)
        assert upstream.wait_received(4) == b"data"


def test_latency_delays_each_direction_and_keeps_order(proxy, upstream):
    proxy.latency(250, "both")
    with connect(proxy) as s:
        start = time.monotonic()
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        rtt = time.monotonic() - start
        assert rtt >= 0.5, rtt  # 250 ms up + 250 ms down
        for i in range(20):
            s.sendall(b"%02d" % i)
        assert recv_exactly(s, 40) == b"".join(b"%02d" % i for i in range(20))
        proxy.latency(0)
        start = time.monotonic()
        s.sendall(b"y")
        assert recv_exactly(s, 1) == b"y"
        assert time.monotonic() - start < 0.25  # half of one delayed round trip


def test_a_dead_upstream_resets_the_node(upstream):
    port = upstream.port
    upstream.close()
    with FaultProxy("127.0.0.1", port) as p:
        try:
            s = connect(p)
        except ConnectionResetError:
            return  # reset before connect() even returned
        with s:
            assert closed_by_peer(s)


def test_bad_direction_is_refused(proxy):
    with pytest.raises(ValueError):
        proxy.blackhole("sideways")
    with pytest.raises(ValueError):
        proxy.latency(-1)
