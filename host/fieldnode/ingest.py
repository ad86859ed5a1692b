"""Host ingest: keep every verified message in SQLite exactly once, and show what is missing.

Two layers, usable apart:

- `IngestStore` — the database. `add_opened` keeps a verified message (the sealed bytes as the original
  record, plus its decoded values) unless its (node, seq) is already there; `add_rejected` logs what was
  refused and why; `gaps` lists the missing sequence numbers per node. Writes are batched: a commit every
  `batch_size` messages or once the oldest uncommitted one is `max_delay` seconds old (checked on the next
  write), and on `flush()`/`close()`. Until then a write is not durable: callers that acknowledge
  anything to anybody must `flush()` first (the Ingestor does).
- `Ingestor` — a verifying subscriber (fieldnode.monitor) feeding an IngestStore. Its MQTT session is
  persistent (fixed client id, clean session off, QoS 1), so the broker queues messages while ingest is
  down, and it acknowledges each message (PUBACK) only after the batch holding it is committed: a message
  the broker considers delivered is on disk. After a crash the broker delivers again whatever was not
  acknowledged: stored now if the commit had not happened, a counted duplicate if it had. At least once on
  the wire, exactly once in the store.

Sequence numbers are per node, start at 1 and are shared by readings and alarms (docs/protocol.md), so
(node, seq) identifies a message. A second copy with identical bytes is a duplicate (a QoS 1 redelivery,
or a replay when its seq is more than `replay_window` below the node's high-water mark); a copy with
different bytes that also verifies is a conflict — a leaked key or a node reusing numbers — and the
first one stays.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import monitor, protocol
from .errors import FieldnodeError

SCHEMA_VERSION = 1
BATCH_SIZE = 256
MAX_DELAY = 0.05  # seconds an uncommitted message may wait for more to share its commit
REPLAY_WINDOW = 256  # a duplicate this far below the high-water mark is counted as a replay
REJECTED_KEEP = 512  # bytes of a rejected payload kept (its full length is recorded)
CLIENT_ID = "fieldnode-ingest"

STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"
REPLAY = "replay"  # the reason logged for a duplicate far below the high-water mark

_SCHEMA = """
CREATE TABLE messages (                 -- every verified message, once per (node, seq)
    node          TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    boot          INTEGER NOT NULL,
    key_id        INTEGER NOT NULL,
    type          INTEGER NOT NULL,     -- 1 reading, 2 alarm
    received_at   REAL    NOT NULL,     -- host clock, seconds since 1970 UTC
    payload       BLOB    NOT NULL,     -- the sealed message exactly as received: the original record
    timestamp     INTEGER NOT NULL,     -- decoded values (docs/protocol.md); the rest are NULL if n/a
    time_quality  INTEGER NOT NULL,
    temperature_c REAL, humidity_rh REAL, pressure_pa REAL, alarm_bits INTEGER, sensor_status INTEGER,
    channel INTEGER, raised INTEGER, high INTEGER, value REAL, limit_value REAL,
    PRIMARY KEY (node, seq)
) WITHOUT ROWID;
CREATE TABLE duplicates (               -- further copies of a stored message (not stored again)
    id INTEGER PRIMARY KEY, received_at REAL NOT NULL, node TEXT NOT NULL, seq INTEGER NOT NULL,
    replay INTEGER NOT NULL             -- 1: seq more than the replay window below the high-water mark
);
CREATE TABLE conflicts (                -- a different message that verifies under a (node, seq) kept
    id INTEGER PRIMARY KEY, received_at REAL NOT NULL, node TEXT NOT NULL, seq INTEGER NOT NULL,
    boot INTEGER NOT NULL, key_id INTEGER NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE rejected (                 -- everything refused, with the reason (fieldnode.monitor.REASONS, replay)
    id INTEGER PRIMARY KEY, received_at REAL NOT NULL, node TEXT, topic TEXT NOT NULL, reason TEXT NOT NULL,
    length INTEGER NOT NULL,            -- of the payload received
    payload BLOB NOT NULL               -- its first bytes (REJECTED_KEEP)
);
"""
_TABLES = ("conflicts", "duplicates", "messages", "rejected")

_INSERT = ("INSERT OR IGNORE INTO messages VALUES "
           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_EXISTING = "SELECT payload FROM messages WHERE node = ? AND seq = ?"
_DUPLICATE = "INSERT INTO duplicates (received_at, node, seq, replay) VALUES (?, ?, ?, ?)"
_CONFLICT = "INSERT INTO conflicts (received_at, node, seq, boot, key_id, payload) VALUES (?, ?, ?, ?, ?, ?)"
_REJECTED = "INSERT INTO rejected (received_at, node, topic, reason, length, payload) VALUES (?, ?, ?, ?, ?, ?)"
_GAPS = """
SELECT node, prev_seq + 1, seq - 1, prev_boot, boot FROM (
    SELECT node, seq, boot,
           LAG(seq, 1, 0) OVER w AS prev_seq, LAG(boot, 1, NULL) OVER w AS prev_boot
    FROM messages {where} WINDOW w AS (PARTITION BY node ORDER BY seq))
WHERE seq > prev_seq + 1 ORDER BY node, seq
"""
_COLUMNS = ("node", "seq", "boot", "key_id", "type", "received_at", "payload", "timestamp", "time_quality",
            "temperature_c", "humidity_rh", "pressure_pa", "alarm_bits", "sensor_status",
            "channel", "raised", "high", "value", "limit_value")


def _row(opened, payload, received_at):
    b = opened.body
    head = (opened.node_id, opened.seq, opened.boot, opened.key_id, opened.type, received_at, payload,
            b.timestamp, b.time_quality)
    if opened.type == protocol.TYPE_READING:
        return head + (b.temperature_c, b.humidity_rh, b.pressure_pa, b.alarm_bits, b.sensor_status,
                       None, None, None, None, None)
    return head + (None, None, None, None, None, b.channel, int(b.raised), int(b.high), b.value, b.limit)


def _opened_from_row(r):
    if r["type"] == protocol.TYPE_READING:
        body = protocol.Reading(r["timestamp"], r["time_quality"], r["temperature_c"], r["humidity_rh"],
                                r["pressure_pa"], r["alarm_bits"], r["sensor_status"])
    else:
        body = protocol.Alarm(r["timestamp"], r["time_quality"], r["channel"], bool(r["raised"]),
                              bool(r["high"]), r["value"], r["limit_value"])
    return protocol.Opened(r["node"], r["key_id"], r["boot"], r["seq"], r["type"], body)


class IngestStore:
    """The ingest database (SQLite, WAL). Thread-safe: every method takes one lock.

    `keys` (node id -> {key_id: master key}, a dict or fleet.KeyRing) is needed only by `add`, which
    verifies raw MQTT messages itself. `readonly=True` opens an existing database for queries only.
    `synchronous` is SQLite's: "FULL" (default) makes every commit survive a power cut; "NORMAL" only a
    crash of this process (faster; the last commits can be lost with the machine).
    """

    def __init__(self, path, keys=None, batch_size=BATCH_SIZE, max_delay=MAX_DELAY, replay_window=REPLAY_WINDOW,
                 synchronous="FULL", readonly=False):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.keys = keys
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.replay_window = replay_window
        self._lock = threading.RLock()
        self._in_txn = False
        self._pending = 0
        self._first_pending = 0.0
        self._db = self._connect(readonly)
        try:
            self._check_schema(readonly)
            if not readonly:
                self._db.execute("PRAGMA synchronous = " + synchronous)
            self._high = dict(self._db.execute("SELECT node, MAX(seq) FROM messages GROUP BY node"))
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise FieldnodeError(f"{self.path}: not a usable ingest database ({exc}): "
                                 "pass another --db or move this file away") from None
        except BaseException:
            self._db.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------

    def _connect(self, readonly):
        if readonly:
            if not self.path.is_file():
                raise FieldnodeError(f"{self.path} not found: run `fieldnode ingest` first or pass --db PATH")
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        if not self.path.parent.is_dir():
            raise FieldnodeError(f"{self.path.parent} is not a directory: create it or pass another --db")
        try:
            # The readings are confidential (they travel encrypted): the file, and SQLite's -wal and -shm
            # next to it (created with the database's mode), are the owner's only.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise FieldnodeError(f"cannot create {self.path} ({exc.strerror}): pass another --db") from None
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)

    def _check_schema(self, readonly):
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables and not readonly:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise FieldnodeError(f"{self.path}: SQLite refused WAL mode: put the database on a local disk")
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            return
        if version > SCHEMA_VERSION:
            raise FieldnodeError(f"{self.path}: ingest schema version {version} is newer than this fieldnode "
                                 f"understands ({SCHEMA_VERSION}): upgrade fieldnode")
        if version != SCHEMA_VERSION or not set(_TABLES) <= tables:
            raise FieldnodeError(f"{self.path} is not a fieldnode ingest database (schema version {version}): "
                                 "pass another --db")

    # -- writing ---------------------------------------------------------------------------------------

    def _begin(self):
        if not self._in_txn:
            self._db.execute("BEGIN")
            self._in_txn = True
            self._first_pending = time.monotonic()

    def _wrote(self):
        self._pending += 1
        if self._pending >= self.batch_size or time.monotonic() - self._first_pending >= self.max_delay:
            self.flush()

    def add_opened(self, opened, payload, received_at=None):
        """Keep a verified message: "stored", "duplicate" (identical copy) or "conflict" (another message that
        verifies under the same (node, seq): the first stays, this one goes to the conflicts table)."""
        return self.add_verified(opened, payload, received_at)[0]

    def add_verified(self, opened, payload, received_at=None):
        """add_opened, returning (outcome, replay): replay is True for a duplicate far below the high-water mark."""
        payload = bytes(payload)
        now = time.time() if received_at is None else received_at
        node, seq = opened.node_id, opened.seq
        with self._lock:
            self._begin()
            db = self._db
            if db.execute(_INSERT, _row(opened, payload, now)).rowcount:
                if seq > self._high.get(node, 0):
                    self._high[node] = seq
                self._wrote()
                return STORED, False
            (kept,) = db.execute(_EXISTING, (node, seq)).fetchone()
            if kept != payload:
                db.execute(_CONFLICT, (now, node, seq, opened.boot, opened.key_id, payload))
                self._wrote()
                return CONFLICT, False
            replay = seq + self.replay_window < self._high.get(node, 0)
            db.execute(_DUPLICATE, (now, node, seq, int(replay)))
            if replay:
                self._add_rejected(node, f"fieldnode/{node}/{protocol.TYPE_NAMES[opened.type]}", REPLAY,
                                   payload, now)
            self._wrote()
            return DUPLICATE, replay

    def add_rejected(self, node_id, topic, reason, payload, received_at=None):
        """Log a refused message: when, from which node and topic, why, its length and first bytes."""
        with self._lock:
            self._begin()
            self._add_rejected(node_id, topic, reason, payload, time.time() if received_at is None else received_at)
            self._wrote()

    def _add_rejected(self, node_id, topic, reason, payload, now):
        self._db.execute(_REJECTED, (now, node_id, topic, reason, len(payload), bytes(payload[:REJECTED_KEEP])))

    def add(self, node_id, topic, payload, received_at=None):
        """Verify a raw MQTT message with `keys` and keep or reject it as the Ingestor does. Returns the
        outcome: stored, duplicate, conflict, rejected, status (nothing kept) or ignored (cmd topics)."""
        if self.keys is None:
            raise FieldnodeError("IngestStore.add needs the payload keys: pass keys= when opening the store")
        what, node, value = monitor.classify(topic, payload, self.keys)
        if node_id is not None and node != node_id:
            raise ValueError(f"topic {topic!r} is not node {node_id!r}'s")
        if what == monitor.MESSAGE:
            return self.add_opened(value, payload, received_at)
        if what == monitor.REJECT:
            self.add_rejected(node, topic, value, payload, received_at)
            return "rejected"
        return what

    def flush(self):
        """Commit what was written: from here on it survives a crash."""
        with self._lock:
            if self._in_txn:
                self._db.execute("COMMIT")
                self._in_txn = False
                self._pending = 0

    def close(self):
        with self._lock:
            if self._db is None:
                return
            try:
                self.flush()
            finally:
                self._db.close()
                self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ---------------------------------------------------------------------------------------

    def high_water(self, node):
        """The highest seq stored for `node` (0 if none)."""
        with self._lock:
            return self._high.get(node, 0)

    def gaps(self, node=None):
        """[(node, first_missing, last_missing)]: the sequence numbers not stored, from 1 up to each node's
        high-water mark (numbers above it are not known to exist yet)."""
        return [(g["node"], g["first"], g["last"]) for g in self.gap_report(node)]

    def gap_report(self, node=None):
        """gaps() as dicts: node, first, last, count, boot_before (None before the first message) and
        boot_after — a gap where the boot changes may be numbers the node never used (docs/reliability.md)."""
        where, params = ("WHERE node = ?", (node,)) if node is not None else ("", ())
        with self._lock:
            rows = self._db.execute(_GAPS.format(where=where), params).fetchall()
        return [{"node": n, "first": first, "last": last, "count": last - first + 1,
                 "boot_before": before, "boot_after": after} for n, first, last, before, after in rows]

    def stats(self):
        """Counts: stored, duplicates, replays, conflicts, rejected (total) and rejected_by_reason, and per
        node: stored, readings, alarms, high_water, missing, duplicates, conflicts, rejected."""
        with self._lock:
            db = self._db
            nodes = {}

            def node(n):
                return nodes.setdefault(n, {"stored": 0, "readings": 0, "alarms": 0, "high_water": 0,
                                            "missing": 0, "duplicates": 0, "conflicts": 0, "rejected": 0})
            for n, type_, count, high in db.execute(
                    "SELECT node, type, COUNT(*), MAX(seq) FROM messages GROUP BY node, type"):
                d = node(n)
                d["stored"] += count
                d["readings" if type_ == protocol.TYPE_READING else "alarms"] += count
                d["high_water"] = max(d["high_water"], high)
            for d in nodes.values():
                d["missing"] = d["high_water"] - d["stored"]
            for table in ("duplicates", "conflicts", "rejected"):
                for n, count in db.execute(f"SELECT node, COUNT(*) FROM {table} GROUP BY node"):
                    node(n)[table] += count
            by_reason = dict(db.execute("SELECT reason, COUNT(*) FROM rejected GROUP BY reason ORDER BY reason"))
            (replays,) = db.execute("SELECT COUNT(*) FROM duplicates WHERE replay").fetchone()
        return {"stored": sum(d["stored"] for d in nodes.values()),
                "duplicates": sum(d["duplicates"] for d in nodes.values()),
                "replays": replays,
                "conflicts": sum(d["conflicts"] for d in nodes.values()),
                "rejected": sum(by_reason.values()),
                "rejected_by_reason": by_reason,
                "missing": sum(d["missing"] for d in nodes.values()),
                "nodes": dict(sorted(nodes.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))}

    def readings(self, node=None, since_seq=None, page=1000):
        """Stored messages (readings and alarms) in (node, seq) order, as dicts: Opened.as_dict() plus
        received_at and payload (the sealed bytes). since_seq: only seq > since_seq. Read in pages, so
        ingest goes on while a caller iterates."""
        last = (node or "", since_seq if since_seq is not None else 0)
        while True:
            sql = "SELECT * FROM messages WHERE (node, seq) > (?, ?)"
            params = list(last)
            if node is not None:
                sql += " AND node = ?"
                params.append(node)
            if since_seq is not None:
                sql += " AND seq > ?"
                params.append(since_seq)
            with self._lock:
                cur = self._db.execute(sql + " ORDER BY node, seq LIMIT ?", params + [page])
                rows = [dict(zip(_COLUMNS, r)) for r in cur]
            for r in rows:
                d = _opened_from_row(r).as_dict()
                d["received_at"] = r["received_at"]
                d["payload"] = r["payload"]
                yield d
            if len(rows) < page:
                return
            last = (rows[-1]["node"], rows[-1]["seq"])

    def rejected(self, reason=None):
        """The rejected log as dicts (received_at, node, topic, reason, length, payload head), oldest first."""
        sql, params = "SELECT received_at, node, topic, reason, length, payload FROM rejected", ()
        if reason is not None:
            sql, params = sql + " WHERE reason = ?", (reason,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [dict(zip(("received_at", "node", "topic", "reason", "length", "payload"), r)) for r in rows]

    def conflicts(self):
        with self._lock:
            rows = self._db.execute("SELECT received_at, node, seq, boot, key_id, payload FROM conflicts "
                                    "ORDER BY id").fetchall()
        return [dict(zip(("received_at", "node", "seq", "boot", "key_id", "payload"), r)) for r in rows]


@dataclass(frozen=True)
class IngestEvent:
    """What happened to one received message, reported once it is committed.

    kind: stored | duplicate | conflict | rejected | status | error. reason: for rejected the reason, for a
    duplicate "replay" or None, for status the text, for error the message. opened: the verified message
    (stored, duplicate, conflict)."""
    kind: str
    node: str | None
    topic: str | None
    received_at: float
    opened: protocol.Opened | None = None
    reason: str | None = None


class _AckingMonitor(monitor.Monitor):
    """A Monitor whose messages go to a queue, with the MQTT packet id and the connection they came on."""

    def __init__(self, inbox, *args, **kw):
        super().__init__(*args, **kw)
        self._inbox = inbox
        self.ack_lock = threading.Lock()
        self.generation = 0
        self.client.on_pre_connect = self._new_connection
        self.client.on_disconnect = lambda *a: self._new_connection()

    def _new_connection(self, *args):
        # A packet id means something only on the connection it came on: acks of an earlier connection's
        # messages are never sent (the broker sends those messages again, and they are acked then).
        with self.ack_lock:
            self.generation += 1

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._new_connection()
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_message(self, client, userdata, msg):
        self._inbox.put((self.generation, msg.mid, msg.qos, msg.topic, msg.payload, time.time()))


class Ingestor:
    """Subscribe with the host certificate and feed every message into `store`.

    A persistent session under `client_id` (one ingest process per client id: a second one would take the
    session over), QoS 1, PUBACK only after the commit. The MQTT thread only queues what arrives; a writer
    thread verifies (monitor.classify), writes the store and commits when `store.batch_size` messages are
    waiting, when nothing more is waiting, or after `store.max_delay`; `on_event(IngestEvent)` is called on
    that thread after each commit. A store failure stops acknowledging (the broker keeps the rest) and
    reports kind "error".
    """

    def __init__(self, store, host, port, ca, cert, key, keys, client_id=CLIENT_ID, on_event=None):
        self.store = store
        self.on_event = on_event or (lambda event: None)
        self.error = None
        self._inbox = queue.Queue()
        self._monitor = _AckingMonitor(self._inbox, host, port, ca, cert, key, keys, client_id=client_id,
                                       clean_session=False, manual_ack=True)
        self._keys = keys
        self._writer = None
        self._stopping = False

    # the commands the writer thread takes besides messages
    _FLUSH, _STOP = object(), object()

    def start(self, timeout=15):
        self._writer = threading.Thread(target=self._write_loop, name="fieldnode-ingest-writer", daemon=True)
        self._writer.start()
        try:
            self._monitor.start(timeout)
        except BaseException:
            self._inbox.put(self._STOP)
            self._writer.join()
            self._writer = None
            raise
        return self

    def stop(self, timeout=15):
        """Commit and acknowledge what arrived, disconnect, then commit anything that came in meanwhile
        (unacknowledged: the broker delivers it again next time, a counted duplicate)."""
        if self._writer is None:
            return
        done = threading.Event()
        self._inbox.put((self._FLUSH, done))
        done.wait(timeout)
        self._monitor.stop()
        self._inbox.put(self._STOP)
        self._writer.join(timeout)
        self._writer = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the writer thread ---------------------------------------------------------------------------

    def _write_loop(self):
        pending = []  # (generation, mid, qos, event or None), in arrival order
        deadline = None
        while True:
            try:
                item = self._inbox.get(timeout=None if not pending else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is self._STOP:
                self._commit(pending, ack=False)
                return
            if item is not None and item[0] is self._FLUSH:
                self._commit(pending)
                pending = []
                item[1].set()
                continue
            if item is not None and self.error is None:
                if not pending:
                    deadline = time.monotonic() + self.store.max_delay
                pending.append(self._handle(*item))
            # Group commit: when the batch is full, when its time is up, or when nothing else is waiting.
            if pending and (len(pending) >= self.store.batch_size or self._inbox.empty()
                            or time.monotonic() >= deadline):
                self._commit(pending)
                pending = []

    def _handle(self, generation, mid, qos, topic, payload, received_at):
        if self.error is not None:
            return generation, mid, qos, None
        try:
            what, node, value = monitor.classify(topic, payload, self._keys)
            event = None
            if what == monitor.MESSAGE:
                outcome, replay = self.store.add_verified(value, payload, received_at)
                event = IngestEvent(outcome, node, topic, received_at, value, REPLAY if replay else None)
            elif what == monitor.REJECT:
                self.store.add_rejected(node, topic, value, payload, received_at)
                event = IngestEvent("rejected", node, topic, received_at, reason=value)
            elif what == monitor.STATUS:
                event = IngestEvent("status", node, topic, received_at, reason=value)
        except Exception as exc:  # the store failed (disk full, database locked...): stop acknowledging
            self._fail(exc)
            return generation, mid, qos, None
        return generation, mid, qos, event

    def _commit(self, pending, ack=True):
        if self.error is None:
            try:
                self.store.flush()
            except Exception as exc:
                self._fail(exc)
        if self.error is not None:
            return
        m = self._monitor
        if ack:
            with m.ack_lock:  # in arrival order, as MQTT requires, and only on the connection they came on
                for generation, mid, qos, _ in pending:
                    if qos and generation == m.generation:
                        m.client.ack(mid, qos)
        for *_, event in pending:
            if event is not None:
                self.on_event(event)

    def _fail(self, exc):
        if self.error is None:
            self.error = f"ingest stopped writing to {self.store.path}: {exc}"
            self.on_event(IngestEvent("error", None, None, time.time(), reason=self.error))
