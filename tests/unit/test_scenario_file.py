"""The scenario file format (fieldnode.bench.scenario): parsing, quick scaling, expansion, expectations."""
import tomllib

import pytest

from fieldnode.bench import scenario as sc_mod
from fieldnode.bench.scenario import Expectation, ScenarioError, load, parse

FILES = sorted(sc_mod.SCENARIOS.glob("*.toml"))
FAULTS = {"broker_down", "link_down", "drop", "blackhole", "latency", "power_loss", "sensor", "clock_jump"}


def base(**kw):
    d = {"name": "t", "nodes": 2, "duration_s": 20}
    d.update(kw)
    return d


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_shipped_scenario_parses_and_demands_zero_loss(path):
    for quick in (False, True):
        sc = load(path, quick=quick)
        assert sc.name == path.stem
        assert sc.events, "a scenario without faults measures nothing"
        assert Expectation("lost", "==", 0) in sc.expect
        assert all(0 <= e.at <= sc.duration_s for e in sc.events)
    quick = load(path, quick=True)
    # the quick version runs in `make test`: its timeline stays short
    assert quick.duration_s <= 25, quick.duration_s


def test_the_shipped_scenarios_cover_every_fault():
    used = {e.action.name for p in FILES for e in load(p).events}
    assert FAULTS <= used, FAULTS - used
    assert len(FILES) >= 5


CRASH_FILES = sorted((sc_mod.SCENARIOS / "crash").glob("*.toml"))


@pytest.mark.parametrize("path", CRASH_FILES, ids=[p.stem for p in CRASH_FILES])
def test_crash_scenarios_parse_and_are_kept_apart(path):
    """tests/scenarios/crash/: scenarios that may lose readings (never silently); not run where lost = 0."""
    for quick in (False, True):
        sc = load(path, quick=quick)
        assert sc.events and Expectation("lost", "==", 0) not in sc.expect
    assert path.parent != sc_mod.SCENARIOS and path not in FILES


def test_broker_down_kills_on_request_and_ingest_down_is_a_fleet_fault():
    sc = parse(base(timeline=[{"do": "broker_down", "at": 1, "for": 2, "kill": True},
                              {"do": "broker_down", "at": 5, "for": 2},
                              {"do": "ingest_down", "at": 9, "for": 3}]))
    assert [e.params for e in sc.events] == [{"kill": True}, {"kill": False}, {}]
    assert sc.events[2].action.scope == "fleet" and sc.events[2].lasting
    with pytest.raises(ScenarioError, match="kill must be a bool"):
        parse(base(timeline=[{"do": "broker_down", "at": 1, "for": 2, "kill": "yes"}]))


@pytest.mark.parametrize("timeline, expected", [
    # ingest down first, back while the broker is still down: it waits for the broker
    ([("ingest_down", 1, 3), ("broker_down", 2, 4)],
     ["ingest stop", "broker stop", "broker start", "ingest start"]),
    # the broker down first, ingest down and back within it
    ([("broker_down", 1, 6), ("ingest_down", 2, 2)],
     ["broker stop", "ingest stop", "broker start", "ingest start"]),
    # the broker's outage inside ingest's: ingest starts when its own outage ends
    ([("ingest_down", 1, 6), ("broker_down", 2, 2)],
     ["ingest stop", "broker stop", "broker start", "ingest start"]),
    # two broker outages overlapping, ingest inside both
    ([("broker_down", 1, 4), ("ingest_down", 2, 1), ("broker_down", 3, 4)],
     ["broker stop", "ingest stop", "broker start", "ingest start"]),
    # the broker alone: ingest keeps running (and reconnects by itself)
    ([("broker_down", 1, 2)], ["broker stop", "broker start"]),
], ids=["ingest-then-broker", "ingest-inside-broker", "broker-inside-ingest", "two-broker-outages", "broker-only"])
def test_ingest_never_starts_against_a_stopped_broker(tmp_path, timeline, expected):
    """Ingest cannot start against a stopped broker: whatever the overlap, it comes back only once the broker
    is up and its own outage is over."""
    calls = []
    state = {"broker": True, "ingest": True}

    class Rig:
        def stop_broker(self, kill=False):
            state["broker"] = False
            calls.append("broker stop")

        def start_broker(self):
            state["broker"] = True
            calls.append("broker start")

    class Delivery:  # as bench.delivery.Delivery: pause and resume do nothing when already so
        def pause(self):
            if state["ingest"]:
                state["ingest"] = False
                calls.append("ingest stop")

        def resume(self):
            if not state["ingest"]:
                assert state["broker"], "ingest started against a stopped broker"
                state["ingest"] = True
                calls.append("ingest start")

    sc = parse(base(timeline=[{"do": name, "at": at, "for": length} for name, at, length in timeline]))
    runner = sc_mod.Runner(sc, tmp_path)
    runner.rig, runner.delivery, runner._t0 = Rig(), Delivery(), 0.0
    steps = sorted([(ev.at, 1, runner._begin, ev) for ev in sc.events] +
                   [(ev.at + ev.duration, 0, runner._end, ev) for ev in sc.events], key=lambda x: x[:2])
    for _, _, step, ev in steps:
        step(ev)
    assert calls == expected and state == {"broker": True, "ingest": True}


def test_a_name_resolves_to_the_shipped_file():
    assert sc_mod.resolve("broker-outage") == sc_mod.SCENARIOS / "broker-outage.toml"
    with pytest.raises(ScenarioError, match="broker-outage"):
        sc_mod.resolve("no-such-scenario")


def test_quick_scales_the_timeline_and_overrides_keys():
    data = base(interval_s=0.5, timeline=[{"do": "link_down", "at": 10, "for": 4}],
                expect={"lost": 0, "max_recovery_s": "<= 30"},
                quick={"scale": 0.5, "nodes": 1, "expect": {"max_recovery_s": "<= 5"}})
    full, quick = parse(data), parse(data, quick=True)
    assert (full.duration_s, full.events[0].at, full.events[0].duration) == (20, 10, 4)
    assert (quick.duration_s, quick.events[0].at, quick.events[0].duration) == (10, 5, 2)
    assert quick.node_ids == ["node-1"] and full.node_ids == ["node-1", "node-2"]
    assert Expectation("max_recovery_s", "<=", 5) in quick.expect
    assert Expectation("lost", "==", 0) in quick.expect
    assert quick.quick and not full.quick


def test_every_expands_to_periodic_instants():
    sc = parse(base(timeline=[{"do": "drop", "every": 4, "from": 2, "until": 14}]))
    assert [e.at for e in sc.events] == [2, 6, 10, 14]


def test_random_instants_are_seeded_spread_and_inside_their_window():
    entry = {"do": "power_loss", "nodes": "random", "random": {"count": 6, "within": [3, 18], "min_gap": 2}}
    a = parse(base(seed=7, timeline=[entry]))
    b = parse(base(seed=7, timeline=[entry]))
    c = parse(base(seed=8, timeline=[entry]))
    times = [e.at for e in a.events]
    assert times == [e.at for e in b.events] and [e.nodes for e in a.events] == [e.nodes for e in b.events]
    assert times != [e.at for e in c.events]
    assert len(times) == 6 and all(3 <= t <= 18 for t in times)
    assert all(t2 - t1 >= 2 - 1e-9 for t1, t2 in zip(times, times[1:]))
    assert all(len(e.nodes) == 1 and e.nodes[0] in ("node-1", "node-2") for e in a.events)
    assert all(e.duration == 1.0 for e in a.events)  # power_loss: off for 1 s unless `for` says otherwise


def test_events_come_out_in_time_order_with_their_parameters():
    sc = parse(base(timeline=[{"do": "latency", "ms": 300, "direction": "down", "at": 9, "for": 2},
                              {"do": "sensor", "fault": "nack", "at": 3, "for": 1, "nodes": ["node-2"]}]))
    assert [(e.action.name, e.at) for e in sc.events] == [("sensor", 3), ("latency", 9)]
    assert sc.events[0].nodes == ("node-2",) and sc.events[1].nodes == ("node-1", "node-2")
    assert sc.events[1].params == {"ms": 300.0, "direction": "down"}
    assert sc.events[0].params["grace"] == 1


def test_clock_jump_lasts_only_when_given_a_duration():
    sc = parse(base(timeline=[{"do": "clock_jump", "seconds": 3600, "at": 1},
                              {"do": "clock_jump", "seconds": -60, "at": 2, "for": 3}]))
    assert [e.lasting for e in sc.events] == [False, True]


@pytest.mark.parametrize("data, message", [
    (base(timeline=[{"do": "brokr_down", "at": 1}]), "unknown action 'brokr_down'"),
    (base(timeline=[{"do": "drop", "at": 1, "for": 2}]), "instantaneous"),
    (base(timeline=[{"do": "latency", "at": 1}]), "needs `ms`"),
    (base(timeline=[{"do": "latency", "ms": 5, "at": 1, "direction": "sideways"}]), "direction"),
    (base(timeline=[{"do": "sensor", "fault": "fire", "at": 1}]), "sensor fault"),
    (base(timeline=[{"do": "drop", "at": 1, "nodes": ["node-9"]}]), "node ids"),
    (base(timeline=[{"do": "drop"}]), "exactly one of"),
    (base(timeline=[{"do": "drop", "at": 1, "every": 2}]), "exactly one of"),
    (base(timeline=[{"do": "drop", "at": 1, "colour": "red"}]), "takes no"),
    (base(timeline=[{"do": "drop", "random": {"count": 5, "within": [0, 4], "min_gap": 2}}]), "do not fit"),
    (base(timeline=[{"do": "environment", "at": 1}]), "at least one"),
    (base(timeline=[{"do": "drop", "at": 21}]), "after the timeline ends"),
    (base(expect={"lost": "about zero"}), "expect.lost"),
    (base(wibble=1), "unknown keys"),
    (base(nodes=0), "nodes"),
    ({"nodes": 1, "duration_s": 5}, "name"),
    (base(quick={"timeline": []}), "cannot set"),
])
def test_mistakes_are_reported_with_where_and_what(data, message):
    with pytest.raises(ScenarioError, match=message):
        parse(data, quick="quick" in data)


def test_a_broken_file_names_itself(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="bad.toml"):
        load(bad)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(bad.read_text())


@pytest.mark.parametrize("spec, actual, ok", [
    (0, 0, True), (0, 1, False), ("<= 20", 20, True), ("<= 20", 20.5, False), (">= 3", 2, False),
    ("< 1", 0.5, True), ("!= 0", 0, False), ("<= 20", None, False),
])
def test_expectations(spec, actual, ok):
    (e,) = sc_mod._expectations({"m": spec}, "t")
    assert e.check({"m": actual})["ok"] is ok


def test_summary_names_the_failed_expectation():
    report = {"scenario": "x", "quick": True, "produced": 10, "received": 9, "lost": 1, "duplicates": 0,
              "gap_count": 1, "max_recovery_s": 2.5,
              "expectations": [{"metric": "lost", "op": "==", "value": 0, "actual": 1, "ok": False}]}
    line = sc_mod.summary(report)
    assert "\n" not in line and "FAILED lost == 0 (got 1)" in line and "produced 10" in line


def test_set_replaces_top_level_keys_after_quick():
    sc = load("broker-outage", quick=True, overrides=["broker_persistence=false", "seed=9", "drain_timeout_s=5"])
    assert sc.broker_persistence is False and sc.seed == 9
    assert sc.drain_timeout_s == 5  # over [quick]'s 25
    assert sc.duration_s == load("broker-outage", quick=True).duration_s
    assert load("broker-outage").broker_persistence is True
    for bad in (["nope=1"], ["seed"], ["name=unquoted"], ["timeline=[]"]):
        with pytest.raises(ScenarioError, match="--set"):
            load("broker-outage", overrides=bad)
