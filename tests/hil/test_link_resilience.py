"""The node's link against a real mosquitto through a TCP relay: cut connections, a blackholed path (sockets
open, nothing moves), and the keepalive finding a dead link between readings. Publishing never hangs,
sampling goes on, and nothing taken meanwhile is lost."""
import pytest

from fieldnode.bench.faults import FaultProxy
from fieldnode.bench.rig import Rig

from link_helpers import ENV, Deliveries, check_complete, queued_at_least, start_node

NODES = ["ln-1", "ln-2", "ln-3"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("ln"), NODES, interval_s=0.2, environment=ENV, autostart=[])
    with r:
        yield r


def test_cut_connections_are_noticed_and_the_node_reconnects(rig):
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy, rig.monitor(**d.callbacks()):
        node = start_node(rig, "ln-1", broker_port=proxy.port)
        try:
            for _ in range(3):
                d.wait_more("ln-1", 3)
                mark = len(node.lines)
                proxy.drop()
                node.wait_for_line(r"publish of seq \d+ failed", start=mark)
                node.wait_for_line(r"connected to", start=mark)
            top = d.wait_more("ln-1", 5)
            d.wait_seq("ln-1", top)
        finally:
            node.stop()
    top, duplicates = check_complete(d, "ln-1")
    assert duplicates <= 3
    assert sum("connected to" in line for line in node.lines) == 4


def test_a_blackholed_link_never_hangs_the_node(rig):
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy, rig.monitor(**d.callbacks()):
        node = start_node(rig, "ln-2", broker_port=proxy.port)
        try:
            before = d.wait_more("ln-2", 3)
            mark = len(node.lines)
            proxy.blackhole()
            # the PUBACK never comes: the publish gives up after timeout_s (1 s) and the message stays queued
            node.wait_for_line(r"publish of seq \d+ failed \(\[Errno 110\] ETIMEDOUT", start=mark)
            # and the node goes on taking readings: the backlog grows while the path is dead
            queued = queued_at_least(node, 8, start=mark)
            mark = len(node.lines)
            proxy.clear()
            node.wait_for_line(r"connected to", start=mark)
            d.wait_seq("ln-2", before + queued + 3)
        finally:
            node.stop()
    top, duplicates = check_complete(d, "ln-2")
    assert top >= before + queued + 3
    assert duplicates <= 2


def test_keepalive_finds_a_dead_link_between_readings(rig):
    """Readings every 3 s and a 2 s keepalive: the node pings after 1 s of silence and keeps a quiet link
    up (mosquitto drops a client silent for 1.5 keepalives). When the path to the broker dies right after a
    reading (held "up" only, so that reading's PUBACK still gets through), the missing PINGRESP takes the
    link down before the next reading is due."""
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy, rig.monitor(**d.callbacks()):
        node = start_node(rig, "ln-3", broker_port=proxy.port, broker={"keepalive_s": 2}, interval_s=3)
        try:
            d.wait_more("ln-3", 3, timeout=30)
            assert sum("connected to" in line for line in node.lines) == 1  # pings kept it up
            d.wait_more("ln-3", 1)
            mark = len(node.lines)
            proxy.blackhole("up")
            failed = node.wait_for_line(r"keepalive failed|publish of seq", timeout=10, start=mark)
            assert failed.group(0) == "keepalive failed", node.lines[mark:]
            mark = len(node.lines)
            proxy.clear()
            node.wait_for_line(r"connected to", start=mark, timeout=15)
            top = d.wait_more("ln-3", 1, timeout=15)
            d.wait_seq("ln-3", top)
        finally:
            node.stop()
    check_complete(d, "ln-3")
