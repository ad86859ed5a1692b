"""The node on the Unix port, measured: the smallest heap it runs in, what a cycle allocates, and what a cycle
costs against a bare umqtt.simple script (fieldnode.bench.perf puts the figures together).

The node runs as deployed: the firmware compiled with mpy-cross by fieldnode.deploy.build (what a board
loads), umqtt.simple compiled beside it, in a provisioned folder on a rig (mosquitto with mTLS, the emulated
sensor bus). The harness (mpy/perf_node.py, compiled too) boots it the way main.py does and drives
Node.cycle() back to back; the bare script (mpy/perf_bare.py) reads the same emulated sensor with the same
driver and publishes a plaintext reading with umqtt.simple over the same kind of TLS connection.

    bench = NodeBench(workdir).start()
    bench.min_heap(cycles=10000)        # {"min_heap_kib": ..., "trials": [...]}
    bench.alloc_per_cycle(cycles=1000)  # bytes per cycle, in all and in parts
    bench.cycle_ratio(rounds=3)         # instructions (callgrind) or CPU time, node / bare, interleaved
    bench.stop()
"""
from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from .. import deploy, paths
from .bme280_emu import BME280Emulator
from .faults import DOWN, UP, FaultProxy
from .rig import Rig

HARNESS = Path(__file__).resolve().parent / "mpy"
NODE_ID = "perf-node"
BARE_ID = "perf-bare"
WIRE_ID = "perf-wire"  # the node again, behind a relay that counts the bytes
_LINE = re.compile(r"^perf: (\S+) ?(.*)$")
_COLLECTED = re.compile(r"==\d+== Collected : (\d+)")


class NoisyBME280(BME280Emulator):
    """An emulated BME280 with a real part's noise: a few LSB on every conversion. With a perfectly steady
    emulated room the node sees the very same raw sample again and again, which its stuck-sensor check
    (node/health.py) answers with a reset and a test conversion every fifth cycle: right for a part that
    stopped converting, not what a working node does in a real room."""

    def __init__(self, seed=5, **environment):
        self._rng = random.Random(seed)
        super().__init__(**environment)

    def _start_conversion(self):
        raw = self._raw
        t, p, h = raw
        self._raw = (t + 8 * self._rng.randint(-2, 2), p + self._rng.randint(-8, 8), h + self._rng.randint(-2, 2))
        try:
            super()._start_conversion()
        finally:
            self._raw = raw


def mpy_arch():
    """The Unix port's native architecture as mpy-cross names it (x64 on this kind of host)."""
    out = subprocess.run([paths.micropython_exe(), "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return deploy.decode_mpy(int(out))[1] or "x64"


class NodeBench:
    """A rig with two provisioned node folders (the node, the bare script's identity) and the compiled tree."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.rig = None
        self.proxy = None
        self.build = None
        self.micropypath = None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        arch = mpy_arch()
        self.build = deploy.build(None, "unix", arch, True, build_root=self.workdir / "build")
        harness = self.workdir / "harness"
        harness.mkdir(exist_ok=True)
        exe = deploy.mpy_cross_exe()
        for src in (HARNESS / "perf_node.py", HARNESS / "perf_alloc.py", HARNESS / "perf_bare.py",
                    paths.UNIX_COMPAT / "ussl.py"):
            subprocess.run([exe, "-march=" + arch, "-o", str(harness / (src.stem + ".mpy")), src.name],
                           cwd=src.parent, check=True, capture_output=True, timeout=60)
        self.micropypath = os.pathsep.join([".frozen", str(harness), str(self.build.folder / "app"),
                                            str(self.build.folder / "lib")])
        self.rig = Rig(self.workdir / "rig", [NODE_ID, BARE_ID, WIRE_ID], autostart=[]).start()
        self.proxy = FaultProxy("127.0.0.1", self.rig.broker.port, name=WIRE_ID).start()
        for node_id in (NODE_ID, BARE_ID, WIRE_ID):
            port = self.proxy.port if node_id == WIRE_ID else None
            self.rig.add_node(node_id, start=False, broker_port=port)
            self.rig.bus.bus(node_id).attach(0x76, NoisyBME280())
        return self

    def stop(self):
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.rig is not None:
            self.rig.stop()
            self.rig = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- one run ------------------------------------------------------------------------------------------

    def folder(self, node_id=NODE_ID):
        return self.rig.nodes[node_id].folder

    def fresh(self, node_id=NODE_ID):
        """Forget the node's flash state (queue, counters): every run starts as a first boot."""
        folder = self.folder(node_id)
        shutil.rmtree(folder / "queue", ignore_errors=True)
        for name in ("counters.dat", "counters.dat.tmp"):
            (folder / name).unlink(missing_ok=True)

    def command(self, script, args, heap_kib=512, valgrind=False):
        cmd = [paths.micropython_exe(), "-X", "heapsize=%dk" % heap_kib, "-m", script] + [str(a) for a in args]
        if valgrind:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + cmd
        return cmd

    def run(self, mode, cycles, heap_kib=512, valgrind=False, timeout=600, node_id=NODE_ID):
        """Run the harness in the node's folder; its "perf:" lines as a dict (fault lines as a list)."""
        self.fresh(node_id)
        return self._run(self.command("perf_node", [mode, cycles], heap_kib, valgrind), node_id, timeout)

    def run_bare(self, cycles, qos=1, heap_kib=512, valgrind=False, timeout=600):
        bus_host, bus_port = self.rig.bus.address
        args = [cycles, qos, "127.0.0.1", self.rig.broker.port, "%s:%d" % (bus_host, bus_port), BARE_ID]
        return self._run(self.command("perf_bare", args, heap_kib, valgrind), BARE_ID, timeout)

    def _run(self, cmd, node_id, timeout):
        env = dict(os.environ, MICROPYPATH=self.micropypath)
        cpu0 = _child_cpu()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=self.folder(node_id), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(timed out after %ss)" % timeout
        usage = _child_cpu() - cpu0
        result = {"faults": [], "exit": proc.returncode, "wall_s": time.monotonic() - t0, "stderr": err[-2000:]}
        for line in out.splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            key, value = m.groups()
            if key == "fault":
                result["faults"].append(value)
            elif key == "mark":
                result.setdefault("marks", 0)
                result["marks"] += 1
            else:
                parts = value.split()
                result[key] = [int(p) for p in parts] if len(parts) > 1 else int(parts[0]) if parts else None
        m = _COLLECTED.search(err)
        if m:
            result["instructions"] = int(m.group(1))
        result["cpu_s"] = usage
        if proc.returncode != 0 and not result["faults"]:
            tail = (err.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
            result["faults"].append(tail)
        return result

    # -- the figures -----------------------------------------------------------------------------------

    def heap_trial(self, heap_kib, cycles):
        """One run at `heap_kib`: passed when every cycle ran, nothing failed or was left unsent, and the heap
        after gc.collect() at the end is no larger than after the 100th cycle."""
        r = self.run("heap", cycles, heap_kib, timeout=max(60, cycles * 0.05))
        at = r.get("heap_at", [0, None])[1]
        end = r.get("heap_end")
        ok = (not r["faults"] and r.get("cycles") == cycles and r.get("seq") == cycles and r.get("waiting") == 0
              and r.get("link_up") == 1 and at is not None and end is not None and end <= at)
        return {"heap_kib": heap_kib, "ok": ok, "cycles": r.get("cycles", 0), "heap_started": r.get("heap_started"),
                "heap_at_100": at, "heap_end": end, "faults": r["faults"][:3], "wall_s": round(r["wall_s"], 1)}

    def min_heap(self, cycles=10000, lo_kib=16, hi_kib=256, step_kib=1, log=None):
        """The smallest heap (KiB, to `step_kib`) at which heap_trial passes: bisection between a failing `lo`
        and a passing `hi` (checked first)."""
        trials = []

        def trial(kib):
            t = self.heap_trial(kib, cycles)
            trials.append(t)
            if log:
                log("  heap %d KiB: %s%s" % (kib, "ok" if t["ok"] else "FAILED",
                                             "" if t["ok"] else " (%s)" % "; ".join(t["faults"][:1] or
                                                                                   ["cycles %s" % t["cycles"]])))
            return t["ok"]

        if not trial(hi_kib):
            return {"min_heap_kib": None, "cycles": cycles, "trials": trials}
        lo, hi = lo_kib, hi_kib
        while hi - lo > step_kib:
            mid = (lo + hi) // 2
            mid -= mid % step_kib
            if mid <= lo:
                mid = lo + step_kib
            if trial(mid):
                hi = mid
            else:
                lo = mid
        best = next(t for t in trials if t["heap_kib"] == hi)
        return {"min_heap_kib": hi, "cycles": cycles, "step_kib": step_kib, "heap_at_100": best["heap_at_100"],
                "heap_end": best["heap_end"], "heap_started": best["heap_started"], "trials": trials}

    def alloc_per_cycle(self, cycles=1000):
        r = self.run("alloc", cycles)
        n = r.get("alloc_cycles") or 0
        if r["faults"] or not n:
            return {"alloc_per_cycle_bytes": None, "faults": r["faults"][:3]}
        per = {k[len("alloc_"):]: r[k] / n for k in r if k.startswith("alloc_") and k != "alloc_cycles"}
        total = per.pop("total")
        mqtt = per.get("mqtt", 0)
        return {"alloc_per_cycle_bytes": round(total - mqtt), "alloc_per_cycle_total_bytes": round(total),
                "alloc_parts_bytes": {k: round(v) for k, v in per.items()}, "cycles": n}

    def tls_bytes(self, short=20, long=220):
        """TCP payload bytes per reading each way between the node and mosquitto (TLS records carrying the
        PUBLISH and the PUBACK), through a counting relay: the difference between a long and a short run."""
        counts = {}
        for n in (short, long):
            before = dict(self.proxy.forwarded)
            r = self.run("run", n, node_id=WIRE_ID, timeout=120)
            if r["faults"]:
                return {"tls_bytes_per_reading": None, "faults": r["faults"][:3]}
            counts[n] = {d: self.proxy.forwarded[d] - before[d] for d in (UP, DOWN)}
        up = (counts[long][UP] - counts[short][UP]) / (long - short)
        down = (counts[long][DOWN] - counts[short][DOWN]) / (long - short)
        return {"tls_bytes_per_reading": round(up + down), "tls_bytes_up": round(up), "tls_bytes_down": round(down)}

    def cycle_cost(self, which, cycles, valgrind):
        """Instructions (valgrind) or CPU seconds of `cycles` cycles of the node or the bare script, the
        start-up included."""
        if which == "node":
            r = self.run("run", cycles, valgrind=valgrind, timeout=900)
        else:
            r = self.run_bare(cycles, valgrind=valgrind, timeout=900)
        if r["faults"]:
            raise RuntimeError("%s run failed: %s" % (which, r["faults"][0]))
        return r["instructions"] if valgrind else r["cpu_s"]

    def cycle_ratio(self, rounds=3, short=50, long=250, valgrind=None, log=None):
        """Per-cycle cost of the node over the bare script's: each measured as the difference between a long
        and a short run (start-up and TLS handshake cancel out), the four runs of a round interleaved, the
        median of the rounds' ratios. Instructions under callgrind when valgrind is there, else CPU time."""
        if valgrind is None:
            valgrind = shutil.which("valgrind") is not None
        ratios, node_costs, bare_costs = [], [], []
        for i in range(rounds):
            cost = {}
            for which in ("node", "bare"):
                for n in (short, long):
                    cost[which, n] = self.cycle_cost(which, n, valgrind)
            node = (cost["node", long] - cost["node", short]) / (long - short)
            bare = (cost["bare", long] - cost["bare", short]) / (long - short)
            node_costs.append(node)
            bare_costs.append(bare)
            ratios.append(node / bare)
            if log:
                log("  round %d: node %s, bare %s per cycle: ratio %.2f" % (i + 1, _fmt(node, valgrind),
                                                                            _fmt(bare, valgrind), node / bare))
        unit = "instructions" if valgrind else "cpu_s"
        return {"node_cycle_ratio": round(statistics.median(ratios), 3), "unit": unit,
                "node_per_cycle": statistics.median(node_costs), "bare_per_cycle": statistics.median(bare_costs),
                "ratios": [round(r, 3) for r in ratios], "cycles": [short, long]}


def _fmt(value, instructions):
    return "%.0f instructions" % value if instructions else "%.1f us CPU" % (value * 1e6)


def _child_cpu():
    """CPU seconds (user + system) of the children waited for so far, cumulative: callers take differences."""
    usage = os.times()
    return usage.children_user + usage.children_system
