"""Host ingest against the real thing: virtual nodes on the Unix port, mosquitto with mutual TLS, SQLite.

A plain monitor (`seen`, clean session) runs beside every ingest as the ground truth of what the nodes
published; the ingest database must hold exactly those bytes, once, whatever happens to the ingest process.
"""
import json
import os
import secrets

import pytest

from fieldnode import pki, protocol
from fieldnode.bench.collector import Collector
from fieldnode.bench.rig import KEY_ID, Rig
from fieldnode.ingest import IngestStore

from ingest_helpers import CliProcess, Client, as_node, running_ingest

ENV = {"temperature_c": 20.0, "humidity_rh": 45.0, "pressure_pa": 101325.0}
NODES = ("node-1", "node-2")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with Rig(tmp_path_factory.mktemp("rig"), NODES + ("node-3",), interval_s=0.1, environment=ENV,
             autostart=NODES) as r:
        yield r


@pytest.fixture(scope="module")
def seen(rig):
    c = Collector()
    with rig.monitor(**c.callbacks()):
        yield c


def seen_seqs(seen, node):
    return {m.seq for m in seen.of(node)}


def wait_published(seen, node, above, what=None):
    """Wait until the ground truth saw `node` publish a seq > above; return the highest seen."""
    return seen.wait_for(lambda c: (lambda s: s if s > above else None)(max(seen_seqs(c, node), default=0)),
                         what=what or "%s publishing past seq %d" % (node, above))


def assert_store_matches_ground_truth(store, seen, nodes=NODES):
    """Every stored message is byte-identical to what the nodes published; none stored twice."""
    rows = list(store.readings())
    keys = [(r["node"], r["seq"]) for r in rows]
    assert len(keys) == len(set(keys))
    # the two subscribers get each message independently: let the ground truth catch up first
    seen.wait_for(lambda c: all(k in c.payloads for k in keys), what="the ground truth to see what was stored")
    for r in rows:
        assert r["node"] in nodes
        assert r["payload"] == seen.payloads[(r["node"], r["seq"])], (r["node"], r["seq"])
    return rows


def test_ingest_keeps_every_message_once_with_the_bytes_that_arrived(rig, seen, tmp_path):
    with running_ingest(rig, tmp_path / "ingest.sqlite", batch_size=8) as (ingestor, store, events):
        for node in NODES:
            events.wait_for(lambda e: len(e.stored_seqs(node)) >= 8, "8 stored messages from %s" % node)
        assert {e.node for e in events.of("status")} >= set(NODES)   # the retained "online" of each node
    with IngestStore(tmp_path / "ingest.sqlite", readonly=True) as store:
        rows = assert_store_matches_ground_truth(store, seen)
        stats = store.stats()
        for node in NODES:
            stored = sorted(r["seq"] for r in rows if r["node"] == node)
            # a new session starts mid-stream: the numbers before its first message are reported missing
            # (sequences start at 1), and nothing after it is
            assert store.gaps(node) == ([(node, 1, stored[0] - 1)] if stored[0] > 1 else [])
            assert stored == list(range(stored[0], stored[-1] + 1))
            assert stats["nodes"][node]["high_water"] == stored[-1]
            assert stats["nodes"][node]["missing"] == stored[0] - 1
        assert stats["rejected"] == 0 and stats["conflicts"] == 0
        assert {r["type"] for r in rows} == {"reading"}
        assert all(r["temperature_c"] is not None and abs(r["temperature_c"] - 20.0) < 0.05 for r in rows)


def test_messages_published_while_ingest_is_down_arrive_after_a_restart(rig, seen, tmp_path):
    db, client_id = tmp_path / "ingest.sqlite", "fieldnode-restart-" + secrets.token_hex(4)
    with running_ingest(rig, db, client_id=client_id) as (_, store, events):
        for node in NODES:
            events.wait_for(lambda e: len(e.stored_seqs(node)) >= 3, "3 stored messages from %s" % node)
        first = {node: min(events.stored_seqs(node)) for node in NODES}
    with IngestStore(db, readonly=True) as store:
        down_at = {node: store.high_water(node) for node in NODES}
    # ingest is down; the nodes go on, the broker queues for the persistent session
    target = {node: wait_published(seen, node, down_at[node] + 10) for node in NODES}
    with running_ingest(rig, db, client_id=client_id) as (_, store, events):
        for node in NODES:
            events.wait_for(lambda e: e.committed_up_to(node) >= target[node], "%s caught up" % node)
        # what the nodes published while ingest was down was delivered to this session
        for node in NODES:
            assert set(range(down_at[node] + 1, target[node] + 1)) <= events.stored_seqs(node)
        assert_store_matches_ground_truth(store, seen)
        for node in NODES:
            assert store.gaps(node) == ([(node, 1, first[node] - 1)] if first[node] > 1 else [])


def test_a_crash_after_the_ack_loses_nothing(rig, seen, tmp_path):
    """`fieldnode ingest` killed with SIGKILL mid-stream: everything it reported stored is in the database,
    and whatever it had received but not committed is delivered again (it was never acknowledged)."""
    db, client_id = tmp_path / "ingest.sqlite", "fieldnode-crash-" + secrets.token_hex(4)
    cli = CliProcess("ingest", "--fleet", str(rig.fleet.root), "--db", str(db), "--json", "--client-id", client_id)
    try:
        def stored(lines):
            rows = [json.loads(line) for line in lines]
            return [r for r in rows if r["event"] == "stored"]
        cli.wait_for_lines(lambda lines: all(len([r for r in stored(lines) if r["node"] == n]) >= 10 for n in NODES),
                           "10 stored messages per node")
    finally:
        cli.kill()
    reported = {(r["node"], r["seq"]) for r in stored(cli.lines)}
    with IngestStore(db, readonly=True) as store:
        kept = {(r["node"], r["seq"]) for r in store.readings()}
    assert reported <= kept   # reported only after the commit: a crash cannot take it back
    first = {n: min(s for node, s in reported if node == n) for n in NODES}
    target = {n: wait_published(seen, n, max(s for node, s in kept if node == n) + 5) for n in NODES}
    with running_ingest(rig, db, client_id=client_id) as (_, store, events):
        for node in NODES:
            events.wait_for(lambda e: e.committed_up_to(node) >= target[node], "%s caught up" % node)
        assert_store_matches_ground_truth(store, seen)
        for node in NODES:
            assert store.gaps(node) == ([(node, 1, first[node] - 1)] if first[node] > 1 else [])


def test_cli_ingest_count_then_gaps(rig, seen):
    db = rig.fleet.root / "ingest.sqlite"   # the default place
    cli = CliProcess("ingest", "--fleet", str(rig.fleet.root), "--count", "5",
                     "--client-id", "fieldnode-cli-" + secrets.token_hex(4))
    try:
        assert cli.wait() == 0, cli.stderr
    finally:
        cli.kill()
    assert "fieldnode: ingest stopped: " in cli.stderr and str(db) in cli.stderr
    assert len(cli.lines) >= 5 and all("node-" in line for line in cli.lines)
    with IngestStore(db, readonly=True) as store:
        assert store.stats()["stored"] >= 5
        expected = store.gap_report()
    gaps = CliProcess("gaps", "--fleet", str(rig.fleet.root), "--json")
    assert gaps.wait() == 0, gaps.stderr
    assert [json.loads(line) for line in gaps.lines] == expected
    assert expected and all(g["first"] == 1 for g in expected)   # the session started mid-stream


def _forged(rig, node, seq, key_id=KEY_ID, type_=protocol.TYPE_READING):
    """A message sealed with the node's own payload key (a stolen node can make those)."""
    key = (rig.nodes[node].folder / "payload.key").read_bytes()
    body = protocol.Reading(1, 0, 21.0, 40.0, 100000.0) if type_ == protocol.TYPE_READING else \
        protocol.Alarm(1, 0, 0, True, True, 30.0, 25.0)
    return protocol.seal(key, node, key_id, 1, seq, body)


def test_hostile_messages_through_the_broker_are_rejected_logged_and_never_stored(rig, seen, tmp_path):
    node = "node-1"
    with running_ingest(rig, tmp_path / "ingest.sqlite", replay_window=5) as (_, store, events):
        events.wait_for(lambda e: len(e.stored_seqs(node)) >= 10, "10 stored messages from %s" % node)
        old_seq = min(events.stored_seqs(node))
        genuine = seen.payloads[(node, old_seq)]
        flips = []
        for bit in range(len(genuine) * 8):
            b = bytearray(genuine)
            b[bit // 8] ^= 1 << (bit % 8)
            flips.append(bytes(b))
        reading_topic = "fieldnode/%s/reading" % node
        with as_node(rig, node) as attacker:
            for payload in flips:                                                  # tampered, every bit
                attacker.publish(reading_topic, payload)
            attacker.publish(reading_topic, genuine[:57])                          # truncated
            attacker.publish(reading_topic, genuine + bytes(16 * 13))              # oversized (266 bytes)
            attacker.publish(reading_topic, os.urandom(100_000))                   # far oversized
            attacker.publish(reading_topic, _forged(rig, node, 10**9, key_id=99))  # unknown key id
            attacker.publish("fieldnode/%s/alarm" % node, _forged(rig, node, 10**9 + 1))  # reading on alarm
            attacker.publish(reading_topic, _forged(rig, node, 10**9 + 2, type_=protocol.TYPE_ALARM))
            attacker.publish("fieldnode/%s/status" % node, b"\x00\xff\xfe junk")  # binary status
            attacker.publish("fieldnode/%s/debug" % node, b"hello")               # unexpected topic
            attacker.publish(reading_topic, genuine)                               # a replay of an old one
            attacker.publish("fieldnode/%s/marker" % node, b"marker")
            events.wait_for(lambda e: any(r.topic.endswith("/marker") for r in e.of("rejected")), "the marker")
        store.flush()
        by_reason = store.stats()["rejected_by_reason"]
        flip_reasons = [r["reason"] for r in store.rejected() if r["payload"] in flips]
        assert len(flip_reasons) == len(flips)
        assert set(flip_reasons) == {"bad-version", "unknown-key-id", "bad-tag"}
        assert by_reason["malformed"] == 3
        assert by_reason["unknown-key-id"] == flip_reasons.count("unknown-key-id") + 1
        assert by_reason["wrong-topic"] == 2
        assert by_reason["bad-status"] == 1
        assert by_reason["unexpected-topic"] == 1 + 1   # debug, and the marker
        assert by_reason["replay"] == 1
        replay = store.rejected("replay")[0]
        assert (replay["node"], replay["payload"], replay["length"]) == (node, genuine, len(genuine))
        big = [r for r in store.rejected("malformed") if r["length"] == 100_000][0]
        assert len(big["payload"]) == 512
        # only what the node itself published is stored: nothing forged, tampered or replayed
        assert_store_matches_ground_truth(store, seen)
        assert store.stats()["duplicates"] >= 1 and store.stats()["conflicts"] == 0
        assert all(r["seq"] < 10**9 for r in store.readings(node))


def test_unknown_node_in_the_acl_is_rejected(rig, seen, tmp_path):
    # node-3 is in the broker's ACL but was never provisioned: the fleet has no payload key for it
    key, cert = pki.issue_client_cert(rig.ca_key, rig.ca_cert, "node-3")
    cert_path = pki.write_cert(tmp_path / "node-3.pem", cert)
    key_path = pki.write_key(tmp_path / "node-3.key", key)
    with running_ingest(rig, tmp_path / "ingest.sqlite") as (_, store, events):
        c = Client(rig.broker.port, rig.fleet.ca_cert, cert_path, key_path, "node-3")
        try:
            c.publish("fieldnode/node-3/reading", _forged(rig, "node-1", 5))
        finally:
            c.close()
        (ev,) = events.wait_for(lambda e: e.of("rejected", "node-3"), "node-3's rejection")
        assert ev.reason == "unknown-node"
        assert store.stats()["nodes"]["node-3"] == {"stored": 0, "readings": 0, "alarms": 0, "high_water": 0,
                                                    "missing": 0, "duplicates": 0, "conflicts": 0, "rejected": 1}


def test_cli_ingest_commits_and_reports_on_sigterm(rig, seen, tmp_path):
    db = tmp_path / "ingest.sqlite"
    cli = CliProcess("ingest", "--fleet", str(rig.fleet.root), "--db", str(db), "--json",
                     "--client-id", "fieldnode-term-" + secrets.token_hex(4))
    try:
        cli.wait_for_lines(lambda lines: len([l for l in lines if '"stored"' in l]) >= 4, "4 stored messages")
        code = cli.terminate()
    finally:
        cli.kill()
    assert code == 130, cli.stderr   # as for Ctrl-C
    printed = {(r["node"], r["seq"]) for r in map(json.loads, cli.lines) if r["event"] == "stored"}
    with IngestStore(db, readonly=True) as store:
        assert {(r["node"], r["seq"]) for r in store.readings()} == printed   # every commit was reported
