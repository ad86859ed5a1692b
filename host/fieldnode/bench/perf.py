"""The performance budget (issue 5), measured: `fieldnode bench perf` and docs/performance.md.

    report = run(workdir, quick=False, log=print)    # one dict; the figures at the top level, `details` below

Every figure comes from a run on this machine, never from a constant; where there is something to compare
with, both sides run side by side in the same run, interleaved, and the figure is the median ratio (the
machine is shared and noisy). The parts, each in a module of its own:

| figure                                    | measured by                                             |
|-------------------------------------------|---------------------------------------------------------|
| min_heap_kib                              | perf_node.NodeBench.min_heap: bisection over -X heapsize |
| alloc_per_cycle_bytes                     | perf_node.NodeBench.alloc_per_cycle                      |
| sealed_reading_bytes, mqtt_bytes_per_reading | perf_wire.wire_figures (+ NodeBench.tls_bytes)        |
| node_cycle_ratio                          | perf_node.NodeBench.cycle_ratio                          |
| ingest_msgs_per_s, ingest_ratio           | perf_ingest.ingest_figures                               |
| fleet_nodes_zero_loss, fleet_rss_per_node_kib | perf_fleet.fleet_search                              |
| redeploy_file_bytes, first_deploy_file_bytes | redeploy_figures (fieldnode.deploy onto a vboard)     |

`quick=True` is the CI version: the same measurements, smaller (fewer cycles, a coarser heap bisection, CPU
time instead of instruction counts, fewer messages, a small fleet for seconds). Its speed figures are not the
full run's and are never asserted anywhere.
"""
from __future__ import annotations

import time
from pathlib import Path

from .perf_fleet import fleet_search
from .perf_ingest import ingest_figures
from .perf_node import NodeBench
from .perf_wire import wire_figures

GOALS = {
    "min_heap_kib": "<= 64 (stretch 48)",
    "alloc_per_cycle_bytes": "<= 1024",
    "sealed_reading_bytes": "== 58",
    "node_cycle_ratio": "<= 1.5",
    "ingest_ratio": ">= 0.8",
    "ingest_msgs_per_s": ">= 10000",
    "fleet_nodes_zero_loss": ">= 200",
    "redeploy_file_bytes": "== 0",
}
FIGURES = ("min_heap_kib", "alloc_per_cycle_bytes", "sealed_reading_bytes", "mqtt_bytes_per_reading",
           "node_cycle_ratio", "ingest_ratio", "ingest_msgs_per_s", "fleet_nodes_zero_loss",
           "fleet_rss_per_node_kib", "redeploy_file_bytes", "first_deploy_file_bytes")

# (full, quick)
SETTINGS = {
    "heap_cycles": (10000, 600),
    "heap_step_kib": (1, 8),
    "heap_range_kib": ((32, 256), (32, 160)),
    "alloc_cycles": (2000, 300),
    "ratio_rounds": (3, 2),
    "ratio_cycles": ((50, 250), (200, 1200)),  # callgrind (full), CPU time (quick)
    "ratio_valgrind": (None, False),  # None: callgrind when valgrind is installed
    "ingest_messages": (20000, 3000),
    "ingest_rounds": (5, 2),
    "fleet_steps": ((50, 100, 200, 300, 400), (6,)),
    "fleet_window_s": (300, 8),
}


def settings(quick):
    return {k: v[1 if quick else 0] for k, v in SETTINGS.items()}


def redeploy_figures(workdir):
    """File bytes the first deploy and an unchanged second one send to a virtual board (fieldnode.deploy)."""
    from ..deploy import deploy
    from .vboard import VBoardProcess

    workdir = Path(workdir)
    vb = VBoardProcess(workdir / "board").start()
    try:
        first = deploy(vb.port, fleet=workdir / "fleet", operator="perf")
        second = deploy(vb.port, fleet=workdir / "fleet", operator="perf")
    finally:
        vb.stop()
    return {"first_deploy_file_bytes": first.bytes_sent, "first_deploy_files": len(first.files_copied),
            "redeploy_file_bytes": second.bytes_sent, "redeploy_files": len(second.files_copied)}


def run(workdir, quick=False, log=None, only=None, **overrides):
    """Measure every figure (or those of the parts in `only`: wire, heap, alloc, ratio, ingest, fleet, deploy);
    `overrides` replace SETTINGS entries (e.g. fleet_steps=(100, 200))."""
    say = log or (lambda text: None)
    s = settings(quick)
    s.update({k: v for k, v in overrides.items() if v is not None})
    workdir = Path(workdir)
    parts = set(only or ("wire", "heap", "alloc", "ratio", "ingest", "fleet", "deploy"))
    t0 = time.monotonic()
    report = {"quick": quick, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
              "goals": GOALS}
    details = report["details"] = {}

    def timed(name, fn):
        t = time.monotonic()
        say("%s ..." % name)
        out = fn()
        details.setdefault("seconds", {})[name] = round(time.monotonic() - t, 1)
        return out

    if "wire" in parts:
        wire = timed("wire", wire_figures)
        report.update(sealed_reading_bytes=wire["sealed_reading_bytes"],
                      mqtt_bytes_per_reading=wire["mqtt_bytes_per_reading"])
        details["wire"] = wire
    if parts & {"heap", "alloc", "ratio", "wire"}:
        with NodeBench(workdir / "node") as bench:
            if "wire" in parts:
                tls = timed("tls bytes", bench.tls_bytes)
                details["wire"]["tls"] = tls
                report["tls_bytes_per_reading"] = tls.get("tls_bytes_per_reading")
            if "heap" in parts:
                lo, hi = s["heap_range_kib"]
                heap = timed("min heap", lambda: bench.min_heap(s["heap_cycles"], lo, hi, s["heap_step_kib"], log=say))
                report["min_heap_kib"] = heap["min_heap_kib"]
                details["heap"] = heap
            if "alloc" in parts:
                alloc = timed("alloc per cycle", lambda: bench.alloc_per_cycle(s["alloc_cycles"]))
                report["alloc_per_cycle_bytes"] = alloc.get("alloc_per_cycle_bytes")
                details["alloc"] = alloc
            if "ratio" in parts:
                short, long = s["ratio_cycles"]
                ratio = timed("cycle ratio", lambda: bench.cycle_ratio(s["ratio_rounds"], short, long,
                                                                      s["ratio_valgrind"], log=say))
                report["node_cycle_ratio"] = ratio["node_cycle_ratio"]
                details["ratio"] = ratio
    if "ingest" in parts:
        ing = timed("ingest", lambda: ingest_figures(workdir / "ingest", s["ingest_messages"], s["ingest_rounds"],
                                                     log=say))
        report.update(ingest_msgs_per_s=ing["ingest_msgs_per_s"], ingest_ratio=ing["ingest_ratio"])
        details["ingest"] = ing
    if "deploy" in parts:
        dep = timed("redeploy", lambda: redeploy_figures(workdir / "deploy"))
        report.update(redeploy_file_bytes=dep["redeploy_file_bytes"],
                      first_deploy_file_bytes=dep["first_deploy_file_bytes"])
        details["deploy"] = dep
    if "fleet" in parts:
        fleet = timed("fleet", lambda: fleet_search(workdir / "fleet", tuple(s["fleet_steps"]), s["fleet_window_s"],
                                                    log=say))
        report.update(fleet_nodes_zero_loss=fleet["fleet_nodes_zero_loss"],
                      fleet_rss_per_node_kib=fleet["fleet_rss_per_node_kib"],
                      fleet_pss_per_node_kib=fleet["fleet_pss_per_node_kib"])
        details["fleet"] = fleet
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    return report


def summary_lines(report):
    """One line per figure: value, goal."""
    out = []
    for key in FIGURES:
        if key in report:
            goal = GOALS.get(key, "")
            out.append("%-26s %-10s %s" % (key, report[key], ("goal " + goal) if goal else ""))
    return out
