"""Host ingest without a broker: the SQLite store (dedup, conflicts, replays, rejections, gaps, batching,
schema), the topic judge (monitor.classify), the writer's ack-after-commit rule, and `fieldnode gaps`."""
import hashlib
import json
import sqlite3
import threading

import pytest

from fieldnode import cli, ingest, monitor, protocol
from fieldnode.errors import FieldnodeError
from fieldnode.ingest import IngestStore
from fieldnode.protocol import Alarm, Reading

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
KEYS = {"node-1": {1: KEY}, "node-2": {1: OTHER_KEY}}
T0 = 1_700_000_000


def _iv(*args):
    # the same arguments seal to the same bytes (a copy); anything else differs, as on a node (fresh IVs)
    return hashlib.sha256(repr(args).encode()).digest()[:16]


def reading(seq, node="node-1", boot=1, temperature=21.5, key=KEY, key_id=1):
    return protocol.seal(key, node, key_id, boot, seq, Reading(T0 + seq, 1, temperature, 45.5, 101325.25, 0, 0),
                         iv=_iv(seq, node, boot, temperature, key, key_id))


def alarm(seq, node="node-1", boot=1):
    return protocol.seal(KEY, node, 1, boot, seq, Alarm(T0 + seq, 1, 0, True, True, 25.5, 25.0),
                         iv=_iv("alarm", seq, node, boot))


def topic(node="node-1", kind="reading"):
    return "fieldnode/%s/%s" % (node, kind)


@pytest.fixture
def store(tmp_path):
    s = IngestStore(tmp_path / "ingest.sqlite", keys=KEYS)
    yield s
    s.close()


def rows(path, sql):
    """Query through a second connection: what is committed, not what the store's transaction sees."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# -- schema and file --------------------------------------------------------------------------------------

def test_new_database_is_versioned_wal_and_private(store):
    path = store.path
    assert rows(path, "PRAGMA user_version") == [(ingest.SCHEMA_VERSION,)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"messages", "duplicates", "conflicts", "rejected"} <= tables
    store.add_opened(protocol.open_message(reading(1), "node-1", KEYS["node-1"]), reading(1))
    for p in path.parent.iterdir():   # the database and SQLite's -wal/-shm beside it
        assert p.stat().st_mode & 0o777 == 0o600, p


def test_a_newer_schema_is_refused_with_one_line_and_left_alone(tmp_path):
    path = tmp_path / "ingest.sqlite"
    IngestStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = path.read_bytes()
    with pytest.raises(FieldnodeError, match="newer than this fieldnode understands.*upgrade fieldnode") as exc:
        IngestStore(path)
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a database at all, just text\n" * 40, "sqlite-other"])
def test_a_file_that_is_not_an_ingest_database_is_refused(tmp_path, content):
    path = tmp_path / "other.sqlite"
    if content == "sqlite-other":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE accounts (id INTEGER)")
        db.commit()
        db.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(FieldnodeError, match="pass another --db") as exc:
        IngestStore(path)
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == before


def test_readonly_needs_an_existing_database(tmp_path):
    with pytest.raises(FieldnodeError, match="not found: run `fieldnode ingest` first"):
        IngestStore(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


# -- stored, duplicate, conflict, replay -------------------------------------------------------------------

def test_a_verified_message_is_kept_with_its_original_bytes_and_values(store):
    payload = reading(1)
    assert store.add("node-1", topic(), payload, received_at=123.5) == "stored"
    store.flush()
    (got,) = list(store.readings())
    assert got["payload"] == payload
    assert got["received_at"] == 123.5
    assert (got["node"], got["seq"], got["boot"], got["key_id"], got["type"]) == ("node-1", 1, 1, 1, "reading")
    assert (got["temperature_c"], got["humidity_rh"], got["pressure_pa"]) == (21.5, 45.5, 101325.25)
    assert got == dict(protocol.open_message(payload, "node-1", KEYS["node-1"]).as_dict(),
                       received_at=123.5, payload=payload)


def test_an_alarm_round_trips_through_the_store(store):
    assert store.add("node-1", topic(kind="alarm"), alarm(4)) == "stored"
    (got,) = list(store.readings())
    assert got == dict(protocol.open_message(alarm(4), "node-1", KEYS["node-1"]).as_dict(),
                       received_at=got["received_at"], payload=alarm(4))
    assert got["raised"] is True and got["limit"] == 25.0


def test_a_second_identical_copy_is_a_duplicate_and_not_stored_again(store):
    payload = reading(7)
    assert store.add("node-1", topic(), payload) == "stored"
    assert store.add("node-1", topic(), payload) == "duplicate"
    assert store.add("node-1", topic(), payload) == "duplicate"
    store.flush()
    assert rows(store.path, "SELECT COUNT(*) FROM messages") == [(1,)]
    assert rows(store.path, "SELECT node, seq, replay FROM duplicates") == [("node-1", 7, 0), ("node-1", 7, 0)]
    s = store.stats()
    assert (s["stored"], s["duplicates"], s["replays"], s["conflicts"], s["rejected"]) == (1, 2, 0, 0, 0)


def test_a_different_message_under_a_stored_seq_is_a_conflict_and_the_first_stays(store):
    first, second = reading(3, temperature=20.0), reading(3, boot=2, temperature=30.0)
    assert store.add("node-1", topic(), first) == "stored"
    assert store.add("node-1", topic(), second) == "conflict"
    store.flush()
    assert rows(store.path, "SELECT payload, temperature_c FROM messages") == [(first, 20.0)]
    (c,) = store.conflicts()
    assert (c["node"], c["seq"], c["boot"], c["payload"]) == ("node-1", 3, 2, second)
    assert store.stats()["nodes"]["node-1"]["conflicts"] == 1


def test_a_reading_and_an_alarm_share_the_counter(store):
    assert store.add("node-1", topic(), reading(5)) == "stored"
    assert store.add("node-1", topic(kind="alarm"), alarm(5)) == "conflict"
    assert store.add("node-1", topic(kind="alarm"), alarm(6)) == "stored"


def test_a_copy_far_below_the_high_water_mark_is_a_replay(tmp_path):
    s = IngestStore(tmp_path / "i.sqlite", keys=KEYS, replay_window=10)
    old = reading(1)
    s.add("node-1", topic(), old)
    for seq in range(2, 13):
        s.add("node-1", topic(), reading(seq))
    assert s.add("node-1", topic(), reading(5, temperature=9.0)) == "conflict"   # other bytes
    assert s.add("node-1", topic(), reading(12)) == "duplicate"                  # near the mark: redelivery
    assert s.add("node-1", topic(), old) == "duplicate"          # 1 + 10 < 12: a replay
    s.close()
    s = IngestStore(tmp_path / "i.sqlite", keys=KEYS, replay_window=10)   # the high-water mark survives
    assert s.add_verified(protocol.open_message(old, "node-1", KEYS["node-1"]), old) == ("duplicate", True)
    st = s.stats()
    assert st["stored"] == 12 and st["duplicates"] == 3 and st["replays"] == 2
    assert st["rejected_by_reason"] == {"replay": 2}
    assert [(r["node"], r["topic"], r["reason"], r["payload"]) for r in s.rejected()] == \
        [("node-1", topic(), "replay", old)] * 2
    s.close()


def test_a_new_message_below_the_high_water_mark_fills_its_gap(store):
    store.add("node-1", topic(), reading(10))
    assert store.gaps() == [("node-1", 1, 9)]
    assert store.add("node-1", topic(), reading(4)) == "stored"   # late (a node's backlog), not a replay
    assert store.gaps() == [("node-1", 1, 3), ("node-1", 5, 9)]
    assert store.high_water("node-1") == 10


# -- gaps --------------------------------------------------------------------------------------------------

def test_gaps_count_from_one_per_node_over_every_type(store):
    for seq in (3, 4, 6, 9):
        store.add("node-1", topic(), reading(seq))
    store.add("node-1", topic(kind="alarm"), alarm(7))
    store.add("node-2", topic("node-2"), reading(1, node="node-2", key=OTHER_KEY))
    store.add("node-2", topic("node-2"), reading(2, node="node-2", key=OTHER_KEY))
    assert store.gaps() == [("node-1", 1, 2), ("node-1", 5, 5), ("node-1", 8, 8)]
    assert store.gaps("node-2") == []
    assert store.gaps("node-3") == []
    s = store.stats()["nodes"]
    assert s["node-1"] == {"stored": 5, "readings": 4, "alarms": 1, "high_water": 9, "missing": 4,
                           "duplicates": 0, "conflicts": 0, "rejected": 0}
    assert s["node-2"]["missing"] == 0 and s["node-2"]["high_water"] == 2


def test_gap_report_marks_a_gap_across_a_restart(store):
    store.add("node-1", topic(), reading(1, boot=4))
    store.add("node-1", topic(), reading(2, boot=4))
    store.add("node-1", topic(), reading(33, boot=5))
    store.add("node-1", topic(), reading(35, boot=5))
    assert store.gap_report() == [
        {"node": "node-1", "first": 3, "last": 32, "count": 30, "boot_before": 4, "boot_after": 5},
        {"node": "node-1", "first": 34, "last": 34, "count": 1, "boot_before": 5, "boot_after": 5}]


def test_gap_before_the_first_message_has_no_boot_before(store):
    store.add("node-1", topic(), reading(40))
    assert store.gap_report() == [{"node": "node-1", "first": 1, "last": 39, "count": 39,
                                   "boot_before": None, "boot_after": 1}]


# -- rejected input through ingest ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [reading, alarm], ids=["reading", "alarm"])
def test_every_single_bit_flip_is_rejected_and_nothing_is_stored(store, make):
    good = make(1)
    kind = "reading" if make is reading else "alarm"
    reasons = set()
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert store.add("node-1", topic(kind=kind), bytes(bad)) == "rejected", bit
    store.flush()
    assert rows(store.path, "SELECT COUNT(*) FROM messages") == [(0,)]
    for r in store.rejected():
        reasons.add(r["reason"])
        assert r["length"] == len(good) and r["node"] == "node-1"
    assert len(store.rejected()) == len(good) * 8
    # the header's key id bits name a key the node does not have; everything else fails the tag
    assert reasons == {"bad-version", "unknown-key-id", "bad-tag"}
    assert store.stats()["stored"] == 0


@pytest.mark.parametrize("length", [0, 1, 10, 57, 59, 73, 75, 257, 250 + 16, 100_000])
def test_truncated_and_oversized_payloads_are_malformed_and_kept_short(store, length):
    payload = (reading(1) * (length // 58 + 1))[:length]
    assert store.add("node-1", topic(), payload) == "rejected"
    (r,) = store.rejected()
    assert r["reason"] == "malformed" and r["length"] == length
    assert r["payload"] == payload[:ingest.REJECTED_KEEP]
    assert store.stats()["stored"] == 0


def test_unknown_key_id_unknown_node_and_wrong_topic(store):
    assert store.add("node-1", topic(), reading(1, key_id=9)) == "rejected"
    assert store.add("node-9", topic("node-9"), reading(1, node="node-9")) == "rejected"
    assert store.add("node-1", topic(kind="alarm"), reading(2)) == "rejected"
    assert store.add("node-1", topic(), alarm(3)) == "rejected"
    # node-2's message republished on node-1's topic does not verify for node-1
    assert store.add("node-1", topic(), reading(4, node="node-2", key=OTHER_KEY)) == "rejected"
    assert [r["reason"] for r in store.rejected()] == ["unknown-key-id", "unknown-node", "wrong-topic",
                                                       "wrong-topic", "bad-tag"]
    assert store.stats()["stored"] == 0


# -- the topic judge ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("topic_, payload, expected", [
    ("fieldnode/node-1/reading", reading(1), ("message", "node-1")),
    ("fieldnode/node-1/status", b"online", ("status", "node-1", "online")),
    ("fieldnode/node-1/status", b"offline", ("status", "node-1", "offline")),
    ("fieldnode/node-1/status", b"", ("status", "node-1", "")),
    ("fieldnode/node-1/status", b"\x00\xffonline", ("reject", "node-1", "bad-status")),
    ("fieldnode/node-1/status", reading(1), ("reject", "node-1", "bad-status")),
    ("fieldnode/node-1/status", b"o" * 65, ("reject", "node-1", "bad-status")),
    ("fieldnode/node-1/status", "onl\u00efne".encode(), ("reject", "node-1", "bad-status")),
    ("fieldnode/node-1/config", b"x", ("reject", "node-1", "unexpected-topic")),
    ("fieldnode/node-1/reading/extra", reading(1), ("reject", "node-1", "unexpected-topic")),
    ("fieldnode/node-1", reading(1), ("reject", "node-1", "unexpected-topic")),
    ("fieldnode//reading", reading(1), ("reject", "", "unexpected-topic")),
    ("fieldnode", b"x", ("reject", None, "unexpected-topic")),
    ("fieldnode/node-1/cmd/reboot", b"x", ("ignore", "node-1", None)),
    ("fieldnode/no de/reading", reading(1), ("reject", "no de", "unknown-node")),
    ("fieldnode/" + "x" * 40 + "/reading", reading(1), ("reject", "x" * 40, "unknown-node")),
    ("fieldnode/node-3/reading", reading(1), ("reject", "node-3", "unknown-node")),
    ("fieldnode/node-1/alarm", reading(1), ("reject", "node-1", "wrong-topic")),
])
def test_classify(topic_, payload, expected):
    got = monitor.classify(topic_, payload, KEYS)
    if expected[0] == "message":
        assert got[:2] == expected and got[2] == protocol.open_message(payload, "node-1", KEYS["node-1"])
    else:
        assert got == expected


def test_monitor_dispatch_calls_the_matching_callback(host_tls):
    calls = []
    m = monitor.Monitor("127.0.0.1", 1, *host_tls, KEYS,
                        on_message=lambda o, p: calls.append(("message", o.seq, p)),
                        on_status=lambda n, t: calls.append(("status", n, t)),
                        on_reject=lambda n, t, r, p: calls.append(("reject", n, t, r)))
    m.dispatch(topic(), reading(2))
    m.dispatch(topic(kind="status"), b"online")
    m.dispatch(topic(kind="alarm"), reading(3))
    m.dispatch("fieldnode/node-1/cmd/x", b"ignored")
    assert calls == [("message", 2, reading(2)), ("status", "node-1", "online"),
                     ("reject", "node-1", topic(kind="alarm"), "wrong-topic")]


@pytest.fixture(scope="module")
def host_tls(tmp_path_factory):
    """A CA file and a host certificate and key: Monitor loads them when it is constructed."""
    from fieldnode import pki

    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = pki.make_ca()
    key, cert = pki.make_host_cert()
    return (pki.write_cert(folder / "ca.pem", ca_cert), pki.write_cert(folder / "host.pem", cert),
            pki.write_key(folder / "host.key", key))


# -- batching and durability -------------------------------------------------------------------------------

def test_writes_are_committed_in_batches_and_on_flush_and_close(tmp_path):
    s = IngestStore(tmp_path / "i.sqlite", keys=KEYS, batch_size=3, max_delay=3600)
    count = "SELECT COUNT(*) FROM messages"
    s.add("node-1", topic(), reading(1))
    s.add("node-1", topic(), reading(2))
    assert rows(s.path, count) == [(0,)]
    assert s.gaps() == []   # the store's own view includes what is not committed yet
    s.add("node-1", topic(), reading(3))
    assert rows(s.path, count) == [(3,)]
    s.add("node-1", topic(), reading(4))
    s.flush()
    assert rows(s.path, count) == [(4,)]
    s.add("node-1", topic(), reading(5))
    s.close()
    assert rows(s.path, count) == [(5,)]
    s.close()   # idempotent


def test_max_delay_commits_on_the_next_write(tmp_path):
    s = IngestStore(tmp_path / "i.sqlite", keys=KEYS, batch_size=1000, max_delay=0)
    s.add("node-1", topic(), reading(1))
    assert rows(s.path, "SELECT COUNT(*) FROM messages") == [(1,)]
    s.add_rejected("node-1", topic(), "bad-tag", b"junk")
    assert rows(s.path, "SELECT reason FROM rejected") == [("bad-tag",)]
    s.close()


def test_add_needs_keys(tmp_path):
    with IngestStore(tmp_path / "i.sqlite") as s:
        with pytest.raises(FieldnodeError, match="pass keys="):
            s.add("node-1", topic(), reading(1))


def test_readings_pages_and_filters(store):
    for seq in range(1, 8):
        store.add("node-1", topic(), reading(seq))
    for seq in (1, 2):
        store.add("node-2", topic("node-2"), reading(seq, node="node-2", key=OTHER_KEY))
    got = [(r["node"], r["seq"]) for r in store.readings(page=2)]
    assert got == [("node-1", s) for s in range(1, 8)] + [("node-2", 1), ("node-2", 2)]
    assert [r["seq"] for r in store.readings("node-1", since_seq=4, page=2)] == [5, 6, 7]
    assert [(r["node"], r["seq"]) for r in store.readings(since_seq=5)] == [("node-1", 6), ("node-1", 7)]
    assert list(store.readings("node-3")) == []


# -- the Ingestor's writer: acknowledge only what is committed, in order, on its own connection ---------

class _AckRecorder:
    def __init__(self, path):
        self.path = path
        self.acks = []  # (mid, rows committed at the moment of the ack)

    def ack(self, mid, qos):
        self.acks.append((mid, rows(self.path, "SELECT COUNT(*) FROM messages")[0][0]))


def _writer(tmp_path, host_tls, batch_size=ingest.BATCH_SIZE):
    store = IngestStore(tmp_path / "i.sqlite", batch_size=batch_size, max_delay=3600)
    events = []
    ing = ingest.Ingestor(store, "127.0.0.1", 1, *host_tls, KEYS, on_event=events.append)
    recorder = _AckRecorder(store.path)
    ing._monitor.client = recorder
    ing._writer = threading.Thread(target=ing._write_loop)
    return ing, store, recorder, events


def _run_writer(ing):
    """Start the writer on what is queued, then flush (commit and ack, as stop() does) and stop it."""
    done = threading.Event()
    ing._inbox.put((ing._FLUSH, done))
    ing._inbox.put(ing._STOP)
    ing._writer.start()
    ing._writer.join(10)
    assert done.is_set() and not ing._writer.is_alive()


def test_writer_acks_after_the_commit_in_arrival_order(tmp_path, host_tls):
    ing, store, recorder, events = _writer(tmp_path, host_tls, batch_size=4)
    gen = ing._monitor.generation
    for mid, seq in enumerate(range(1, 5), start=1):
        ing._inbox.put((gen, mid, 1, topic(), reading(seq), 1000.0 + seq))
    ing._inbox.put((gen, 5, 1, topic(kind="status"), b"online", 1005.0))
    ing._inbox.put((gen, 6, 0, topic(), reading(5), 1006.0))   # QoS 0: nothing to acknowledge
    ing._inbox.put((gen, 7, 1, topic(), reading(1), 1007.0))   # a redelivery
    ing._inbox.put((gen, 8, 1, topic(), b"junk", 1008.0))
    _run_writer(ing)
    # (packet id, messages committed when its PUBACK went out): the first batch of 4 is committed before
    # any of it is acknowledged, the rest on the flush; in arrival order, QoS 0 left out
    assert recorder.acks == [(1, 4), (2, 4), (3, 4), (4, 4), (5, 5), (7, 5), (8, 5)]
    # events come after the commit too, one per message
    assert [(e.kind, e.opened.seq if e.opened else e.reason) for e in events] == [
        ("stored", 1), ("stored", 2), ("stored", 3), ("stored", 4), ("status", "online"), ("stored", 5),
        ("duplicate", 1), ("rejected", "malformed")]
    assert [e.received_at for e in events] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0, 1006.0, 1007.0, 1008.0]
    store.close()


def test_writer_never_acks_a_packet_id_of_an_earlier_connection(tmp_path, host_tls):
    ing, store, recorder, events = _writer(tmp_path, host_tls)
    old = ing._monitor.generation
    ing._inbox.put((old, 1, 1, topic(), reading(1), 1.0))
    ing._monitor._new_connection()   # the connection dropped before the writer got to it
    ing._inbox.put((old + 1, 1, 1, topic(), reading(1), 2.0))   # the broker's redelivery, same packet id
    _run_writer(ing)
    assert [m for m, _ in recorder.acks] == [1]   # once: for the copy on the current connection
    assert [e.kind for e in events] == ["stored", "duplicate"]
    store.close()


def test_writer_stops_acknowledging_when_the_store_fails(tmp_path, host_tls):
    ing, store, recorder, events = _writer(tmp_path, host_tls)
    store._db.execute("DROP TABLE messages")   # the next insert fails
    gen = ing._monitor.generation
    ing._inbox.put((gen, 1, 1, topic(), reading(1), 1.0))
    ing._inbox.put((gen, 2, 1, topic(kind="status"), b"online", 2.0))
    _run_writer(ing)
    assert recorder.acks == []
    assert [e.kind for e in events] == ["error"]
    assert ing.error.startswith("ingest stopped writing to ") and "\n" not in ing.error
    store._db.close()
    store._db = None


# -- `fieldnode gaps` ---------------------------------------------------------------------------------------

@pytest.fixture
def gaps_db(tmp_path):
    path = tmp_path / "fleet" / "ingest.sqlite"
    path.parent.mkdir()
    with IngestStore(path, keys=KEYS) as s:
        for seq in (1, 2, 5, 9):
            s.add("node-1", topic(), reading(seq, boot=1 if seq < 9 else 2))
        s.add("node-2", topic("node-2"), reading(1, node="node-2", key=OTHER_KEY))
    return path


def test_cli_gaps_lists_missing_ranges(gaps_db, capsys):
    assert cli.main(["gaps", "--fleet", str(gaps_db.parent)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "node-1: 4 stored up to seq 9, 5 missing:",
        "  seq 3-4 (2)",
        "  seq 6-8 (3) across a restart (boot 1 -> 2)",
        "node-2: 1 stored up to seq 1, nothing missing"]


def test_cli_gaps_json_and_node_filter(gaps_db, capsys):
    assert cli.main(["gaps", "--db", str(gaps_db), "--json", "--node", "node-1"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(g["node"], g["first"], g["last"], g["count"]) for g in got] == [("node-1", 3, 4, 2), ("node-1", 6, 8, 3)]
    assert cli.main(["gaps", "--db", str(gaps_db), "--json", "--node", "node-2"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_gaps_errors_are_one_line(gaps_db, tmp_path, capsys):
    before = gaps_db.read_bytes()
    assert cli.main(["gaps", "--db", str(gaps_db), "--node", "node-7"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "node-7" in err and "check the node id" in err
    assert cli.main(["gaps", "--db", str(tmp_path / "none.sqlite")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `fieldnode ingest` first" in err
    assert not (tmp_path / "none.sqlite").exists()
    assert gaps_db.read_bytes() == before


def test_cli_ingest_bad_options(tmp_path, capsys):
    assert cli.main(["ingest", "--fleet", str(tmp_path), "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err
    assert cli.main(["ingest", "--fleet", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fleet directory" in err
    assert not (tmp_path / "nowhere").exists()


def test_cli_ingest_without_a_broker_is_one_line_and_leaves_no_database(tmp_path, capsys):
    from fieldnode import pki
    from fieldnode.bench.broker import free_port
    from fieldnode.fleet import Fleet

    f = Fleet(tmp_path / "fleet")
    ca_key, ca_cert = pki.make_ca()
    key, cert = pki.make_host_cert()
    for path in (f.ca_cert, f.host_cert):
        path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_cert(f.ca_cert, ca_cert)
    pki.write_cert(f.host_cert, cert)
    pki.write_key(f.host_key, key)
    before = sorted(p.name for p in f.root.rglob("*"))
    assert cli.main(["ingest", "--fleet", str(f.root), "--broker", "127.0.0.1:%d" % free_port()]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the broker" in err
    assert sorted(p.name for p in f.root.rglob("*")) == before
