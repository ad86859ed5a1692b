"""How the scenario runner reads the probe's ledger: seals, numbers handed out twice, sensor-fault windows.

No processes: a stand-in rig whose nodes have console lines with arrival times, as VirtualNode keeps them.
"""
from types import SimpleNamespace

from fieldnode.bench.delivery import Arrival
from fieldnode.bench.scenario import Runner, parse

INTERVAL = 0.5


def node(*lines):
    """A node console: (time, line) pairs."""
    return SimpleNamespace(lines=[line for _, line in lines], line_times=[t for t, _ in lines])


def seal(t, seq, boot=1, digest="00" * 8, type_=1):
    return (t, "bench-probe: sealed %d %d %d %s" % (type_, boot, seq, digest))


def runner(**nodes):
    r = Runner(parse({"name": "t", "nodes": sorted(nodes), "duration_s": 10, "interval_s": INTERVAL}), "/nowhere")
    r.rig = SimpleNamespace(nodes=nodes)
    return r


def test_seals_are_keyed_by_node_and_seq_with_type_boot_digest_and_time():
    r = runner(a=node((1.0, "bench-probe: up"), seal(1.1, 1, digest="ab" * 8), (1.2, "fieldnode: hello"),
                      seal(1.6, 2, type_=2)))
    seals = r._seals()
    assert seals[("a", 1)] == {"type": "reading", "boot": 1, "digest": "ab" * 8, "time": 1.1}
    assert seals[("a", 2)]["type"] == "alarm"
    assert len(seals) == 2 and r.resealed == []


def test_a_seal_cut_off_by_a_power_loss_before_it_was_stored_is_uncommitted():
    # boot 1 seals 1..3, power is cut 5 ms after seq 3; boot 2 hands out 3 again (it never reached flash)
    r = runner(a=node(seal(1.0, 1), seal(1.5, 2), seal(2.0, 3, digest="11" * 8),
                      seal(3.0, 3, boot=2, digest="22" * 8), seal(3.5, 4, boot=2)))
    r._kills = {"a": [2.005]}
    seals = r._seals()
    assert seals[("a", 3)]["digest"] == "22" * 8  # the last seal of a number is the one that counts
    assert r._uncommitted(seals) == ([("a", 3)], [])


def test_a_kept_message_whose_number_comes_back_is_overwritten_a_loss():
    # seq 2 was sealed just before the cut but seq 3 after it: 2 had been stored, the next boot reusing it
    # replaced a kept message; 3 was the seal in flight
    r = runner(a=node(seal(1.0, 1), seal(1.9, 2), seal(2.0, 3), seal(4.0, 2, boot=2), seal(4.5, 3, boot=2)))
    r._kills = {"a": [2.01]}
    assert r._uncommitted(r._seals()) == ([("a", 3)], [("a", 2)])


def test_a_seal_long_before_the_cut_is_not_excused():
    r = runner(a=node(seal(1.0, 1), seal(4.0, 1, boot=2)))
    r._kills = {"a": [3.0]}
    assert r._uncommitted(r._seals()) == ([], [("a", 1)])


def test_a_number_handed_out_twice_without_a_power_cut_is_overwritten():
    r = runner(a=node(seal(1.0, 1), seal(1.5, 1, boot=2)))
    assert r._uncommitted(r._seals()) == ([], [("a", 1)])


def test_declared_drops_come_from_the_queue_full_console_line():
    r = runner(a=node((1.0, "fieldnode: queue full (16 records): dropped seq 7 unsent, 1 dropped in all"),
                      (1.1, "fieldnode: publish of seq 9 failed (timeout): it stays queued")))
    assert r._declared_drops() == {("a", 7)}


def arrival(seq, status, t=0.0):
    return Arrival(t, "a", seq, "stored", "reading", 0, status, 0.0)


def test_unflagged_counts_valid_looking_readings_inside_a_sensor_fault_after_its_grace():
    r = runner(a=node(*(seal(1.0 + 0.5 * i, i + 1) for i in range(8))))
    seals = r._seals()  # seq 1..8 at 1.0, 1.5, ... 4.5
    r._sensor_windows = [["a", "nack", 2.0, 3.6, 1]]  # seals 3, 4, 5, 6 (2.0 .. 3.5) inside; the first is grace
    stored = {("a", q): arrival(q, 0 if q in (3, 5) else 1) for q in range(1, 9)}
    assert r._unflagged(seals, stored) == [["a", 5, "nack"]]  # seq 3 was the grace reading
    r._sensor_windows = [["a", "nack", 2.0, 3.6, 3]]
    assert r._unflagged(seals, stored) == []


def test_a_loss_counts_as_silent_unless_a_gap_of_the_store_covers_it():
    from fieldnode.bench.scenario import INVARIANTS, silently_lost

    gaps = [["a", 3, 5], ["b", 10, 10]]
    assert silently_lost([("a", 3), ("a", 5), ("b", 10)], gaps) == []
    assert silently_lost([("a", 6), ("b", 3), ("c", 4)], gaps) == [("a", 6), ("b", 3), ("c", 4)]
    assert ("lost_silently", "==", 0) in INVARIANTS  # every scenario checks it, whatever it expects of `lost`
