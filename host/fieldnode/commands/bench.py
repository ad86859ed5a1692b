"""`fieldnode bench run`: a fault scenario against virtual nodes (other `bench` commands live beside it)."""
import json
import sys
import tempfile

from ..errors import FieldnodeError
from . import arg, command


@command("bench run", "run a fault scenario (tests/scenarios/*.toml) against virtual nodes and measure delivery")
@arg("scenario", metavar="SCENARIO", help="a scenario file, or the name of one in tests/scenarios")
@arg("--json", action="store_true", help="print the report as one JSON object")
@arg("--quick", action="store_true", help="the scenario's short version (its [quick] table)")
@arg("--keep", metavar="DIR", help="run in DIR and keep it (node folders, broker log, ingest database)")
@arg("--set", metavar="KEY=VALUE", action="append", default=[],
     help="replace a top-level key of the file, VALUE in TOML (e.g. seed=7, broker_persistence=false)")
def do_bench_run(args):
    from ..bench import scenario as sc_mod

    sc = sc_mod.load(args.scenario, quick=args.quick, overrides=args.set)

    def log(text):
        if not args.json:
            print(text, flush=True)

    log("scenario %s%s: %d node(s), %.0fs timeline, interval %.2fs" % (
        sc.name, " (quick)" if sc.quick else "", len(sc.node_ids), sc.duration_s, sc.interval_s))
    if args.keep:
        report = sc_mod.run(sc, args.keep, log)
    else:
        with tempfile.TemporaryDirectory(prefix="fieldnode-bench-") as tmp:
            report = sc_mod.run(sc, tmp, log)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_report(report))
    line = sc_mod.summary(report)
    if not report["ok"]:
        raise FieldnodeError(line)
    print("fieldnode: " + line, file=sys.stderr)
    return 0


def format_report(r):
    rows = [("produced", r["produced"]), ("received", r["received"]), ("lost", r["lost"]),
            ("dropped (reported by the node)", r["dropped_reported"]), ("duplicates (not stored twice)", r["duplicates"]),
            ("gaps in the store", r["gap_count"]), ("max recovery", "%ss" % r["max_recovery_s"]),
            ("reconnects", r["reconnects"]), ("power losses", r["power_losses"]),
            ("flagged readings", r["flagged_readings"]), ("drained", "%s in %.1fs" % (r["drained"], r["drain_s"]))]
    out = ["%-32s %s" % row for row in rows]
    for g in r["gaps"]:
        out.append("gap: %s seq %d..%d" % tuple(g))
    for e in r["expectations"]:
        out.append("%-4s %s %s %g (got %s)" % ("ok" if e["ok"] else "FAIL", e["metric"], e["op"], e["value"],
                                               e["actual"]))
    return "\n".join(out)
