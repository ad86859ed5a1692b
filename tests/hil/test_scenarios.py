"""Every fault scenario in tests/scenarios, quick version, on the real bench: virtual nodes on the Unix port,
mosquitto with mutual TLS behind fault-injecting relays, the host's ingest store. Zero loss is required.

The full versions are run by hand (`fieldnode bench run NAME`); docs/reliability.md has their results.
"""
import json

import pytest

from fieldnode import cli
from fieldnode.bench import scenario as sc_mod

FILES = sorted(sc_mod.SCENARIOS.glob("*.toml"))


def failed(report):
    return ["%s %s %g (got %s)" % (e["metric"], e["op"], e["value"], e["actual"])
            for e in report["expectations"] if not e["ok"]]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_quick_scenario_loses_nothing(path, tmp_path):
    sc = sc_mod.load(path, quick=True)
    report = sc_mod.run(sc, tmp_path)
    # the scenario ran: the nodes produced, the faults happened and the store heard from every node
    assert report["produced"] >= len(sc.node_ids) * 10, report
    assert report["faults"], report
    assert all(n["received"] for n in report["per_node"].values()), report["per_node"]
    # the users' rule: delivered exactly once, or visibly reported missing; never altered
    assert report["lost"] == 0, (report["lost_messages"], report["gaps"])
    assert report["received"] + report["dropped_reported"] == report["produced"]
    assert report["altered"] == 0 and report["unexpected"] == 0 and report["conflicts"] == 0
    assert report["drained"], report
    assert not failed(report), (failed(report), sc_mod.summary(report))


def test_a_broker_crash_may_lose_readings_but_never_silently(tmp_path):
    """tests/scenarios/crash/broker-crash.toml: mosquitto SIGKILLed three times. What the broker acknowledged
    and lost with it may be missing, but only where the store shows a gap; everything else arrives once."""
    sc = sc_mod.load(sc_mod.SCENARIOS / "crash" / "broker-crash.toml", quick=True)
    report = sc_mod.run(sc, tmp_path)
    kills = [f for f in report["faults"] if f[1] == "begin" and f[2] == "broker_down"]
    assert len(kills) == 3 and all(f[4] == {"kill": True} for f in kills), report["faults"]
    assert report["produced"] >= len(sc.node_ids) * 10, report
    assert report["lost_silently"] == 0, (report["lost_messages"], report["gaps"])
    assert report["received"] + report["lost"] + report["dropped_reported"] == report["produced"]
    assert report["altered"] == 0 and report["unexpected"] == 0 and report["conflicts"] == 0
    # (the drain waits out its timeout when readings are gone: they never arrive)
    assert report["drained"] or report["lost"], report
    assert not failed(report), (failed(report), sc_mod.summary(report))


def _tiny(tmp_path, expect):
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nnodes = 1\ninterval_s = 0.25\nduration_s = 2\ndrain_timeout_s = 10\n'
                    '[[timeline]]\ndo = "drop"\nat = 1\n[expect]\n' + expect)
    return path


def test_bench_run_json_reports_and_exits_0_when_expectations_hold(tmp_path, capsys):
    code = cli.main(["bench", "run", str(_tiny(tmp_path, 'lost = 0\nproduced = ">= 4"\n')), "--json",
                     "--keep", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 0, err
    for key in ("produced", "received", "duplicates", "lost", "gaps", "max_recovery_s", "dropped_reported"):
        assert key in report
    assert report["produced"] >= 4 and report["received"] == report["produced"] and report["lost"] == 0
    assert report["max_recovery_s"] is not None and report["reconnects"] >= 1
    assert len(err.strip().splitlines()) == 1 and "tiny: ok" in err
    assert (tmp_path / "run" / "ingest.sqlite").is_file()  # --keep keeps the store and the node folders


def test_bench_run_exits_1_with_a_one_line_summary_when_an_expectation_fails(tmp_path, capsys):
    code = cli.main(["bench", "run", str(_tiny(tmp_path, 'produced = "<= 0"\n')), "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out)["ok"] is False
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("fieldnode: tiny: FAILED produced <= 0 (got ")
