"""Shared by the store-and-forward, link and sensor-health HIL tests: a virtual node with short network
timeouts, a collector that keeps every delivery (duplicates included), and the completeness check the
users' rule asks for. Every wait is bounded and on a condition, never a sleep."""
import json
import time

from fieldnode import nodeconfig
from fieldnode.bench.collector import Collector

# A node on the bench gives up on a silent broker after 1 s and retries within 0.1-1 s.
FAST = {"timeout_s": 1, "retry_min_s": 0.2, "retry_max_s": 1}
ENV = {"temperature_c": 20.0, "humidity_rh": 45.0, "pressure_pa": 101325.0}


def start_node(rig, node_id, broker_port=None, broker=None, queue=None, interval_s=None):
    """Provision `node_id` on the rig with FAST link settings (plus `broker`/`queue` overrides) and start it."""
    node = rig.add_node(node_id, start=False, broker_port=broker_port)
    path = node.folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg["broker"].update(FAST)
    cfg["broker"].update(broker or {})
    cfg.setdefault("queue", {}).update(queue or {})
    if interval_s is not None:
        cfg["interval_s"] = interval_s
    nodeconfig.validate(cfg)
    path.write_text(json.dumps(cfg, indent=1, sort_keys=True))
    return node.start()


class Deliveries(Collector):
    """A Collector that also keeps every delivery in arrival order, duplicates included:
    `arrivals` holds (node, seq, boot, type, payload)."""

    def __init__(self):
        super().__init__()
        self.arrivals = []

    def on_message(self, opened, payload):
        with self._cond:  # an RLock: Collector.on_message takes it again
            self.arrivals.append((opened.node_id, opened.seq, opened.boot, opened.type, bytes(payload)))
            super().on_message(opened, payload)

    def seqs(self, node):
        with self._cond:
            return [a[1] for a in self.arrivals if a[0] == node]

    def count(self, node):
        return len(self.seqs(node))

    def wait_seq(self, node, seq, timeout=20.0):
        """Wait until every seq of `node` from 1 to `seq` has arrived."""
        self.wait_for(lambda d: set(range(1, seq + 1)) <= set(d.seqs(node)), timeout,
                      "%s: every seq up to %d" % (node, seq))

    def wait_more(self, node, n, timeout=20.0):
        """Wait for n more deliveries from `node` than now; return the highest seq then."""
        start = self.count(node)
        self.wait_for(lambda d: d.count(node) >= start + n, timeout, "%d more messages from %s" % (n, node))
        return max(self.seqs(node))

    def readings(self, node):
        with self._cond:
            return [m for m in self.messages if m.node_id == node and m.type == 1]


def check_complete(d, node):
    """The users' rule at the host: from 1 to the highest seq of `node` nothing is missing, and a seq that
    arrived more than once arrived with the very same bytes (replayed, never re-sealed or reused).
    Returns (highest seq, number of duplicate deliveries)."""
    with d._cond:
        mine = [a for a in d.arrivals if a[0] == node]
    payloads = {}
    for _, seq, _, _, payload in mine:
        payloads.setdefault(seq, set()).add(payload)
    top = max(payloads)
    missing = sorted(set(range(1, top + 1)) - set(payloads))
    assert not missing, "%s: seqs never delivered: %s" % (node, missing[:30])
    changed = sorted(s for s, p in payloads.items() if len(p) > 1)
    assert not changed, "%s: seqs delivered with different bytes: %s" % (node, changed[:30])
    return top, len(mine) - len(payloads)


def queued_at_least(node, n, start=0, timeout=20.0):
    """Wait (bounded) for the node to report at least n messages waiting on flash (its "N queued" console
    lines, printed with every failed connect attempt); return the number."""
    deadline = time.monotonic() + timeout
    while True:
        m = node.wait_for_line(r" (\d+) queued", max(deadline - time.monotonic(), 0.1), start=start)
        if int(m.group(1)) >= n:
            return int(m.group(1))
        start = node.lines.index(m.string, start) + 1
