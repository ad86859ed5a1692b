"""What reached the fleet's store, as the bench measures it: every message the store answered for, when.

    with Delivery(rig, workdir / "ingest.sqlite") as d:
        d.wait_for(lambda d: d.stored_count("node-1") >= 3, timeout=20)
        d.arrivals          # [Arrival(time, node, seq, outcome, type, timestamp, sensor_status, wall)]
        d.store.gaps()      # the store's own view of missing sequence numbers
        d.digests()         # {(node, seq): sha256 prefix of the sealed bytes the store keeps}

The store is fieldnode.ingest's IngestStore (SQLite) fed by its Ingestor — a persistent QoS 1 session that
acknowledges a message only once it is committed: the same path the fleet's messages take in production.
The bench only listens to the Ingestor's events (reported after each commit) and reads the database.
"""
import hashlib
import threading
import time
from dataclasses import dataclass

from .. import protocol
from ..fleet import KeyRing
from ..ingest import CONFLICT, DUPLICATE, STORED, IngestStore, Ingestor
from .broker import LOOPBACK


def digest(payload):
    """The 8-byte SHA-256 prefix, in hex, that the bench probe prints for each sealed message."""
    return hashlib.sha256(bytes(payload)).hexdigest()[:16]


@dataclass(frozen=True)
class Arrival:
    time: float  # time.monotonic() when the store reported it committed
    node: str
    seq: int
    outcome: str  # stored | duplicate | conflict
    type: str  # reading | alarm
    timestamp: int  # the node's clock in the message
    sensor_status: int  # readings; 0 for alarms
    wall: float  # time.time() when it was received


class Delivery:
    def __init__(self, rig, db_path, client_id="fieldnode-bench-ingest"):
        self.rig = rig
        self.store = IngestStore(db_path)
        self.arrivals = []
        self.rejected = []  # (node, topic, reason)
        self.errors = []  # the Ingestor's own failures (it stops acknowledging)
        self._first = {}  # (node, seq) -> the Arrival that stored it
        self._cond = threading.Condition()
        self._client_id = client_id
        self._ingestor = self._new_ingestor()
        self._started = False

    def _new_ingestor(self):
        f = self.rig.fleet
        return Ingestor(self.store, LOOPBACK, self.rig.broker.host_port, f.ca_cert, f.host_cert, f.host_key,
                        KeyRing(f), client_id=self._client_id, on_event=self._on_event)

    def _on_event(self, ev):
        with self._cond:
            if ev.kind in (STORED, DUPLICATE, CONFLICT):
                o = ev.opened
                a = Arrival(time.monotonic(), o.node_id, o.seq, ev.kind, protocol.TYPE_NAMES[o.type],
                            o.body.timestamp, getattr(o.body, "sensor_status", 0), ev.received_at)
                self.arrivals.append(a)
                if ev.kind == STORED:
                    self._first.setdefault((a.node, a.seq), a)
            elif ev.kind == "rejected":
                self.rejected.append((ev.node, ev.topic, ev.reason))
            elif ev.kind == "error":
                self.errors.append(ev.reason)
            self._cond.notify_all()

    # -- queries --------------------------------------------------------------------------------------

    def stored(self, node=None):
        """{(node, seq): the Arrival that stored it}."""
        with self._cond:
            return {k: v for k, v in self._first.items() if node is None or k[0] == node}

    def stored_count(self, node=None):
        with self._cond:
            return sum(1 for k in self._first if node is None or k[0] == node)

    def outcomes(self):
        with self._cond:
            counts = {STORED: 0, DUPLICATE: 0, CONFLICT: 0}
            for a in self.arrivals:
                counts[a.outcome] += 1
            return counts

    def digests(self):
        """{(node, seq): digest of the sealed bytes the store keeps} — read back from the database."""
        return {(r["node"], r["seq"]): digest(r["payload"]) for r in self.store.readings()}

    def wait_for(self, predicate, timeout):
        """Wait (bounded) until predicate(self) holds; returns whether it did. Re-evaluated on every
        store event, and at least every half second for predicates that also look at other state."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    # -- life cycle -----------------------------------------------------------------------------------

    def start(self):
        self._ingestor.start()
        self._started = True
        return self

    def pause(self):
        """Take ingest away as an operator stopping `fieldnode ingest` would: it commits and acknowledges what
        it has, then disconnects; the broker queues for its persistent session meanwhile."""
        if self._started:
            self._ingestor.stop()
            self._started = False

    def resume(self):
        """Start ingest again (a new Ingestor on the same store and session, as a restarted process)."""
        if not self._started:
            self._ingestor = self._new_ingestor()
            self._ingestor.start()
            self._started = True

    def stop(self):
        self.pause()
        self.store.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
