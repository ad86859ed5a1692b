"""Fleet scale: how many virtual nodes one machine runs at one reading per second each, against one mosquitto,
with nothing lost — a stepped search, judged by the ingest store.

    fleet_search(workdir, steps=(50, 100, 200, 300), duration_s=300)

A step is a fresh rig (CA, mosquitto with mTLS and one ACL entry per node, the emulated sensor bus) with N
virtual nodes on the MicroPython Unix port (interval 1 s, each under the bench probe, which announces every
sealed message), an Ingestor feeding an IngestStore (persistent session, PUBACK after commit). The nodes
start spread over a few seconds; once every node has a message in the store the window opens and runs
`duration_s`. Then the drain: nodes keep running until every message sealed before the window closed is in
the store (bounded). A step passes when

- lost == 0: every (node, seq) the probes announced up to the cutoff is in the store, and the store shows no
  gap (IngestStore.gaps()) up to each node's highest stored seq;
- every node kept its pace: at least `duration_s / interval - 2` readings sealed inside the window;
- no node process died, nothing was rejected, no ingest error.

The search stops at the first step that fails; `fleet_nodes_zero_loss` is the last one that passed. RSS per
node is the mean VmRSS of the node processes, read from /proc at the end of the window.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from ..fleet import KeyRing
from ..ingest import Ingestor, IngestStore
from .broker import LOOPBACK
from .rig import Rig

_SEALED = re.compile(r"^bench-probe: sealed (\d+) (\d+) (\d+) ")


def _mem_kib(pid, path, field):
    try:
        with open("/proc/%d/%s" % (pid, path)) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _memory(nodes):
    """(mean RSS, mean PSS) in KiB of the running node processes: RSS counts the interpreter's shared pages
    in full for every process, PSS shares them out."""
    rss = [_mem_kib(n.proc.pid, "status", "VmRSS:") for n in nodes if n.running]
    pss = [_mem_kib(n.proc.pid, "smaps_rollup", "Pss:") for n in nodes if n.running]
    rss, pss = [r for r in rss if r], [p for p in pss if p]
    return (round(sum(rss) / len(rss)) if rss else None, round(sum(pss) / len(pss)) if pss else None)


def _seals(node, until=None):
    """[(seq, time)] the node's probe announced (up to `until`, time.monotonic())."""
    out = []
    for line, t in zip(list(node.lines), list(node.line_times)):
        if until is not None and t > until:
            break
        m = _SEALED.match(line)
        if m:
            out.append((int(m.group(3)), t))
    return out


def fleet_step(workdir, n, duration_s=300, interval_s=1.0, heapsize="256k", start_spread_s=None, drain_s=90,
               log=None):
    workdir = Path(workdir)
    node_ids = ["fleet-%03d" % i for i in range(n)]
    say = log or (lambda text: None)
    rig = Rig(workdir / "rig", node_ids, interval_s=interval_s, autostart=[], heapsize=heapsize).start()
    events = {"rejected": 0, "error": 0}

    def on_event(event):
        if event.kind in events:
            events[event.kind] += 1

    f = rig.fleet
    store = IngestStore(workdir / "ingest.sqlite", keys=KeyRing(f))
    ingestor = Ingestor(store, LOOPBACK, rig.broker.host_port, f.ca_cert, f.host_cert, f.host_key, KeyRing(f),
                        client_id="fieldnode-perf-fleet", on_event=on_event)
    result = {"nodes": n, "duration_s": duration_s, "interval_s": interval_s, "heapsize": heapsize}
    try:
        ingestor.start()
        spread = start_spread_s if start_spread_s is not None else min(30.0, 0.05 * n)
        t_start = time.monotonic()
        for i, node_id in enumerate(node_ids):
            rig.add_node(node_id, probe=True)
            wait = t_start + spread * (i + 1) / n - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        # warm-up: every node has a message in the store (bounded)
        deadline = time.monotonic() + 60 + 0.2 * n
        while True:
            have = {row["node"] for row in _stored_nodes(store)}
            missing = [x for x in node_ids if x not in have]
            if not missing:
                break
            if time.monotonic() > deadline:
                result.update(ok=False, why="%d node(s) never reached the store, e.g. %s" % (len(missing), missing[0]))
                return result
            time.sleep(0.5)
        say("  %d nodes up after %.1fs; window of %ds" % (n, time.monotonic() - t_start, duration_s))
        window_open = time.monotonic()
        time.sleep(duration_s)
        cutoff = time.monotonic()
        rss, pss = _memory(rig.nodes.values())
        produced = {}
        slow = []
        for node_id, node in rig.nodes.items():
            seals = _seals(node, cutoff)
            produced[node_id] = {seq for seq, _ in seals}
            in_window = sum(1 for _, t in seals if t >= window_open)
            if in_window < duration_s / interval_s - 2:
                slow.append((node_id, in_window))
        total = sum(len(s) for s in produced.values())
        # drain: everything sealed before the cutoff reaches the store (bounded)
        deadline = time.monotonic() + drain_s
        while True:
            lost_count = _missing(store, produced)
            if not lost_count or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        crashed = [nid for nid, node in rig.nodes.items() if not node.running]
        gaps = store.gaps()
        result.update(
            produced=total, lost=lost_count, gap_count=len(gaps), gaps=gaps[:10],
            slow_nodes=len(slow), slowest=sorted(slow, key=lambda x: x[1])[:5], crashed=len(crashed),
            rejected=events["rejected"], ingest_errors=events["error"],
            readings_per_s=round(sum(1 for node in rig.nodes.values() for _, t in _seals(node, cutoff)
                                     if t >= window_open) / duration_s, 1),
            rss_per_node_kib=rss, pss_per_node_kib=pss)
        result["ok"] = (lost_count == 0 and not gaps and not slow and not crashed and not events["rejected"]
                        and not events["error"])
        if not result["ok"]:
            result["why"] = ", ".join(k for k, bad in (("lost", lost_count), ("gaps", gaps), ("slow nodes", slow),
                                                      ("crashed", crashed), ("rejected", events["rejected"]),
                                                      ("ingest errors", events["error"])) if bad)
        return result
    finally:
        for node in rig.nodes.values():
            node.stop()
        ingestor.stop()
        store.close()
        rig.stop()


def _stored_nodes(store):
    return [{"node": n} for n in store.stats()["nodes"] if n]


def _missing(store, produced):
    """How many of `produced` ({node: {seq}}) are not in the store: above the node's high-water mark or in a
    gap below it."""
    holes = {}
    for node, first, last in store.gaps():
        holes.setdefault(node, []).append((first, last))
    missing = 0
    for node, seqs in produced.items():
        high = store.high_water(node)
        ranges = holes.get(node, ())
        for seq in seqs:
            if seq > high or any(a <= seq <= b for a, b in ranges):
                missing += 1
    return missing


def fleet_search(workdir, steps=(50, 100, 200, 300), duration_s=300, heapsize="256k", log=None):
    """Run the steps in order, stop at the first that fails; the figures and every step's result."""
    workdir = Path(workdir)
    results = []
    best = 0
    rss = pss = None
    for n in steps:
        if log:
            log("fleet step: %d nodes, %ds window" % (n, duration_s))
        r = fleet_step(workdir / ("step-%d" % n), n, duration_s=duration_s, heapsize=heapsize, log=log)
        results.append(r)
        if log:
            log("  %s: %s" % ("passed" if r.get("ok") else "FAILED", _short(r)))
        if not r.get("ok"):
            break
        best = n
        rss, pss = r.get("rss_per_node_kib"), r.get("pss_per_node_kib")
    return {"fleet_nodes_zero_loss": best, "fleet_rss_per_node_kib": rss, "fleet_pss_per_node_kib": pss,
            "fleet_window_s": duration_s,
            "fleet_steps": results}


def _short(r):
    keys = ("produced", "lost", "gap_count", "slow_nodes", "crashed", "readings_per_s", "rss_per_node_kib", "pss_per_node_kib",
            "why")
    return ", ".join("%s=%s" % (k, r[k]) for k in keys if k in r)
