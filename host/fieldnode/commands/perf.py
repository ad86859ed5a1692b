"""`fieldnode bench perf`: the performance budget, measured (fieldnode.bench.perf; docs/performance.md)."""
import json
import sys
import tempfile

from ..errors import UsageError
from . import arg, command

_PARTS = ("wire", "heap", "alloc", "ratio", "ingest", "fleet", "deploy")


def _steps(text):
    try:
        steps = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError("--fleet-steps: node counts separated by commas, e.g. 50,100,200") from None
    if not steps or min(steps) < 1:
        raise UsageError("--fleet-steps: node counts of at least 1")
    return steps


@command("bench perf", "measure the performance budget: heap, allocations, bytes on the wire, node cost, host "
                       "ingest, fleet scale, redeploy bytes")
@arg("--json", action="store_true", help="print one JSON object (the figures at the top level, details below)")
@arg("--quick", action="store_true", help="the short version (about a minute; CI runs it): smaller counts, "
                                          "speed figures not comparable with a full run")
@arg("--only", metavar="PARTS", help="comma-separated parts to run: " + ", ".join(_PARTS) + " (default: all)")
@arg("--fleet-steps", metavar="N,N,...", help="node counts of the fleet search (default 50,100,200,300,400; "
                                              "quick: 6)")
@arg("--fleet-window", type=float, metavar="S", help="seconds each fleet step runs (default 300; quick: 8)")
@arg("--keep", metavar="DIR", help="work in DIR and keep it (rigs, node folders, builds, databases)")
def do_bench_perf(args):
    from ..bench import perf

    only = None
    if args.only:
        only = [p.strip() for p in args.only.split(",") if p.strip()]
        bad = [p for p in only if p not in _PARTS]
        if bad:
            raise UsageError("--only: unknown part %s (one of %s)" % (bad[0], ", ".join(_PARTS)))
    if args.fleet_window is not None and args.fleet_window <= 0:
        raise UsageError("--fleet-window: give a positive number of seconds")
    overrides = {"fleet_steps": _steps(args.fleet_steps) if args.fleet_steps else None,
                 "fleet_window_s": args.fleet_window}

    def log(text):
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.keep:
        report = perf.run(args.keep, quick=args.quick, log=log, only=only, **overrides)
    else:
        with tempfile.TemporaryDirectory(prefix="fieldnode-perf-") as tmp:
            report = perf.run(tmp, quick=args.quick, log=log, only=only, **overrides)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print("\n".join(perf.summary_lines(report)))
    return 0
