"""Store-and-forward on virtual nodes against a real mosquitto: what the node takes while the broker is away
arrives afterwards, in order, none lost; power cuts (SIGKILL) reuse no sequence number and leave no gap;
a backlog on flash survives a power cut and is delivered after it."""
import pytest

from fieldnode.bench.faults import FaultProxy
from fieldnode.bench.rig import Rig

from link_helpers import ENV, Deliveries, check_complete, queued_at_least, start_node

NODES = ["sf-1", "sf-2", "sf-3"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("sf"), NODES, interval_s=0.2, environment=ENV, autostart=[])
    with r:
        yield r


def test_broker_outage_backlog_arrives_in_order_none_lost(rig):
    """The broker is stopped while the node keeps sampling, then started again on the same port.

    The host's monitor has a clean session on a broker without persistence, so what the new broker accepts
    before the monitor has subscribed again would reach no one: the proxy holds the node's path closed until
    the new monitor is subscribed. The node sees the broker gone either way."""
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy:
        node = start_node(rig, "sf-1", broker_port=proxy.port)
        try:
            monitor = rig.monitor(**d.callbacks()).start()
            try:
                before = d.wait_more("sf-1", 3)
                mark = len(node.lines)
                rig.stop_broker()
            finally:
                monitor.stop()
            node.wait_for_line(r"publish of seq \d+ failed|broker unreachable", start=mark)
            queued = queued_at_least(node, 10, start=mark)
            proxy.blackhole()
            rig.start_broker()
            with rig.monitor(**d.callbacks()):
                proxy.clear()
                node.wait_for_line(r"connected to", start=mark)
                last_queued = before + queued
                d.wait_seq("sf-1", last_queued + 5, timeout=30)
        finally:
            node.stop()
    top, duplicates = check_complete(d, "sf-1")
    assert top >= last_queued + 5
    # the backlog came in order: the stored ones after the outage arrive oldest first
    after = [s for s in d.seqs("sf-1") if before < s <= last_queued]
    firsts = [s for i, s in enumerate(after) if s not in after[:i]]
    assert firsts == sorted(firsts), firsts
    assert duplicates <= 2, duplicates  # only what was in flight when the broker went


def test_power_cuts_reuse_no_number_and_leave_no_gap(rig):
    """SIGKILL at arbitrary moments of the cycle, five times, one of them with a backlog on flash that the
    next boot delivers."""
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy, rig.monitor(**d.callbacks()):
        node = start_node(rig, "sf-2", broker_port=proxy.port)
        boots = []
        mark = 0
        try:
            for i in range(5):
                boots.append(int(node.wait_for_line(r"boot (\d+) started", start=mark).group(1)))
                if i == 3:  # a backlog on flash when the power goes
                    d.wait_more("sf-2", 2)
                    held = len(node.lines)
                    proxy.blackhole()
                    node.wait_for_line(r"publish of seq \d+ failed|broker unreachable", start=held)
                    queued_at_least(node, 5, start=held)
                    node.kill()
                    proxy.clear()
                else:
                    d.wait_more("sf-2", 3 + i)  # the cut lands wherever the cycle happens to be
                    node.kill()
                mark = len(node.lines)
                node.start()
            boots.append(int(node.wait_for_line(r"boot (\d+) started", start=mark).group(1)))
            d.wait_more("sf-2", 5)
            top = max(d.seqs("sf-2"))
            d.wait_seq("sf-2", top)
        finally:
            node.stop()
    assert boots == list(range(boots[0], boots[0] + 6))
    top, duplicates = check_complete(d, "sf-2")
    # every boot's numbers come after the previous boot's: nothing was reused
    with d._cond:
        by_boot = {}
        for who, seq, boot, _, _ in d.arrivals:
            if who == "sf-2":
                by_boot.setdefault(boot, []).append(seq)
    ranges = sorted((min(s), max(s)) for s in by_boot.values())
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), ranges
    assert len(by_boot) == 6


def test_the_queue_on_flash_is_bounded_and_drops_are_reported(rig):
    """A small queue and a long outage: the oldest are dropped, the node says so on its console and on its
    status topic, and what it kept arrives; the dropped ones are the only gap."""
    d = Deliveries()
    with FaultProxy("127.0.0.1", rig.broker.port) as proxy, rig.monitor(**d.callbacks()):
        proxy.blackhole()
        node = start_node(rig, "sf-3", broker_port=proxy.port, queue={"records": 16, "replay": 20})
        try:
            dropped = node.wait_for_line(r"queue full \(16 records\): dropped seq (\d+) unsent, (\d+) dropped",
                                         timeout=30)
            assert dropped.group(1) == "1"
            node.wait_for_line(r"dropped seq 5 unsent")
            mark = len(node.lines)
            proxy.clear()
            node.wait_for_line(r"connected to", start=mark)
            d.wait_for(lambda c: any(s[0] == "sf-3" and "dropped=" in s[1] for s in c.statuses), 20,
                       "the drops on the status topic")
            top = d.wait_more("sf-3", 20)
        finally:
            node.stop()
    seqs = set(d.seqs("sf-3"))
    first = min(seqs)
    assert first >= 6  # 1..5 at least were dropped
    assert set(range(first, top + 1)) <= seqs  # after the dropped ones, nothing is missing
    status = [s[1] for s in d.statuses if s[0] == "sf-3" and "dropped=" in s[1]][-1]
    reported = int(status.split("dropped=")[1].split()[0])
    assert reported == first - 1  # exactly the missing numbers were reported as dropped
    log_drops = [l for l in node.lines if "queue full" in l]
    assert len(log_drops) == reported

