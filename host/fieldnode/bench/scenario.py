"""Fault scenarios: a TOML file describing a timeline of faults, run against virtual nodes, measured.

    sc = load("tests/scenarios/broker-outage.toml", quick=True)
    report = run(sc, workdir)                 # a dict: produced, received, lost, gaps, max_recovery_s, ...
    failed = [e for e in report["expectations"] if not e["ok"]]

The file format, the actions and every number in the report are documented in docs/hil.md; this module
is the reference. Parsing (load/parse) does no I/O beyond reading the file, so a scenario can be checked
without running it.
"""
from __future__ import annotations

import math
import operator
import random
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import FieldnodeError
from .bme280_emu import CHIP_ID
from .vnode import NodeProcessError

SCENARIOS = paths.REPO / "tests" / "scenarios"
# Integrity rules that hold in every scenario whatever its file says (the users' rule: never altered).
INVARIANTS = (("altered", "==", 0), ("unexpected", "==", 0), ("conflicts", "==", 0), ("rejected", "==", 0),
              ("ingest_errors", "==", 0), ("crashed", "==", 0), ("lost_silently", "==", 0))
_OPS = {"==": operator.eq, "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
        "!=": operator.ne}
_EXPECTATION = re.compile(r"\s*(==|<=|>=|<|>|!=)\s*(-?[0-9.]+)\s*$")
_PROBE_SEAL = re.compile(r"^bench-probe: sealed (\d+) (\d+) (\d+) ([0-9a-f]{16})$")
_PROBE_UP = "bench-probe: up"
_DROPPED = re.compile(r"queue full .*: dropped seq (\d+) unsent")  # firmware/node/queue.py
_TYPES = {1: "reading", 2: "alarm"}


class ScenarioError(FieldnodeError):
    pass


# -- actions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """What a timeline entry can do. `lasting` actions have a duration (`for`; none: until the timeline ends)
    and are undone at its end; "optional": lasting only when `for` is given;
    `scope` is "node" (acts on the listed nodes), "fleet" (on the broker or the host's ingest: every node is
    affected) or
    "none" (not a fault: no recovery is measured). `recovery` names what counts as recovered."""
    name: str
    lasting: bool
    scope: str
    params: dict  # name -> (type, default); default None = required
    recovery: str = "message"  # "message": the node's next stored message; "valid": next valid reading
    default_for: float | None = None
    help: str = ""


_DIRECTION = (str, "both")
ACTIONS = {a.name: a for a in (
    Action("broker_down", True, "fleet", {"kill": (bool, False)},
           help="stop mosquitto (SIGTERM; with kill=true SIGKILL: a crash, nothing saved); start it again on "
                "the same port"),
    Action("ingest_down", True, "fleet", {},
           help="stop the host's ingest (it commits, acknowledges and disconnects; the broker queues for its "
                "session); start it again"),
    Action("link_down", True, "node", {},
           help="reset the node's connections and refuse new ones (each is reset as it opens)"),
    Action("drop", False, "node", {}, help="reset the node's open connections once"),
    Action("blackhole", True, "node", {"direction": _DIRECTION, "reset": (bool, False)},
           help="hold the node's traffic, sockets open; at the end release it, or with reset=true cut it"),
    Action("latency", True, "node", {"ms": (float, None), "direction": _DIRECTION},
           help="delay the node's traffic by `ms` each way named"),
    Action("power_loss", True, "node", {"after_seal_ms": (list, [])}, default_for=1.0,
           help="SIGKILL the node; `for` seconds later power it up again (same flash)"),
    Action("sensor", True, "node", {"fault": (str, None), "chip_id": (int, 0x58), "grace": (int, 1)},
           recovery="valid",
           help="an emulated BME280 fault: nack, stuck, stall or chip_id; the first `grace` readings sealed "
                "after it began may still look valid (the cycle in flight, or a detector that needs several)"),
    Action("clock_jump", "optional", "node", {"seconds": (float, None)},
           help="step the node's wall clock by `seconds` (back at the end if `for` is given)"),
    Action("environment", False, "none",
           {"temperature_c": (float, 0.0), "humidity_rh": (float, 0.0), "pressure_pa": (float, 0.0)},
           help="set the emulated environment (only the channels given)"),
)}
SENSOR_FAULTS = ("nack", "stuck", "stall", "chip_id")


@dataclass
class Event:
    at: float
    action: Action
    nodes: tuple  # node ids
    duration: float | None  # lasting actions: None = until the timeline ends
    params: dict
    index: int  # the timeline entry it came from

    @property
    def lasting(self):
        return self.action.lasting is True or (self.action.lasting == "optional" and self.duration is not None)


@dataclass
class Expectation:
    metric: str
    op: str
    value: float

    def check(self, report):
        actual = report.get(self.metric)
        ok = actual is not None and _OPS[self.op](actual, self.value)
        return {"metric": self.metric, "op": self.op, "value": self.value, "actual": actual, "ok": bool(ok)}

    def __str__(self):
        return "%s %s %g" % (self.metric, self.op, self.value)


@dataclass
class Scenario:
    name: str
    description: str
    node_ids: list
    interval_s: float
    duration_s: float
    drain_timeout_s: float
    warmup_timeout_s: float
    seed: int
    environment: dict
    thresholds: dict
    events: list
    expect: list
    quick: bool = False
    broker_persistence: bool = True
    path: Path | None = None
    extra: dict = field(default_factory=dict)


# -- parsing ---------------------------------------------------------------------------------------------

_TOP = {"name", "description", "nodes", "interval_s", "duration_s", "drain_timeout_s", "warmup_timeout_s", "seed",
        "environment", "thresholds", "timeline", "expect", "quick", "broker_persistence"}
_EVENT_KEYS = {"do", "at", "every", "from", "until", "random", "for", "nodes"}


def resolve(name_or_path):
    """A scenario file: a path, or the name of one in tests/scenarios (with or without .toml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (SCENARIOS / name_or_path, SCENARIOS / (str(name_or_path) + ".toml")):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(x.stem for x in SCENARIOS.glob("*.toml"))) or "none"
    raise ScenarioError("no scenario %r (a file, or one of: %s)" % (str(name_or_path), known))


def load(name_or_path, quick=False, overrides=()):
    """Load a scenario file. `overrides`: ("KEY=VALUE", ...) replacing top-level keys, VALUE in TOML syntax
    (`broker_persistence=false`, `seed=7`, `nodes=["a", "b"]`); they have the last word, after [quick]."""
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError("%s: %s" % (path, exc)) from None
    replace = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _TOP - {"timeline", "quick"}:
            raise ScenarioError("--set %s: KEY=VALUE with KEY one of %s"
                                % (item, ", ".join(sorted(_TOP - {"timeline", "quick"}))))
        try:
            replace[key] = tomllib.loads("v = " + value)["v"]
        except tomllib.TOMLDecodeError:
            raise ScenarioError("--set %s: the value is not TOML (strings need quotes)" % item) from None
    sc = parse(data, quick=quick, where=str(path), overrides=replace)
    sc.path = path
    return sc


def _num(value, where, minimum=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ScenarioError("%s: expected a%s number, got %r" % (where, "n integer" if integer else "", value))
    if minimum is not None and value < minimum:
        raise ScenarioError("%s: must be >= %s, got %r" % (where, minimum, value))
    return value


def parse(data, quick=False, where="scenario", overrides=None):
    """A Scenario from the TOML data. With `quick`, the [quick] table applies: `scale` multiplies every
    time on the timeline and duration_s; any other key replaces the top-level one ([quick.expect] merges
    into [expect]). `overrides` then replace top-level keys."""
    unknown = set(data) - _TOP
    if unknown:
        raise ScenarioError("%s: unknown keys %s (known: %s)" % (where, sorted(unknown), ", ".join(sorted(_TOP))))
    data = dict(data)
    scale = 1.0
    q = data.pop("quick", {})
    if not isinstance(q, dict):
        raise ScenarioError("%s: [quick] must be a table" % where)
    if quick:
        q = dict(q)
        scale = _num(q.pop("scale", 1.0), where + ": quick.scale", 0.001)
        bad = set(q) - (_TOP - {"quick", "name", "timeline"})
        if bad:
            raise ScenarioError("%s: [quick] cannot set %s" % (where, sorted(bad)))
        expect = dict(data.get("expect", {}))
        expect.update(q.pop("expect", {}))
        if "duration_s" not in q and "duration_s" in data:
            q["duration_s"] = data["duration_s"] * scale
        data.update(q)
        data["expect"] = expect
    data.update(overrides or {})
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("%s: `name` (a non-empty string) is required" % where)
    nodes = data.get("nodes", 1)
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        node_ids = ["node-%d" % (i + 1) for i in range(_num(nodes, where + ": nodes", 1, True))]
    elif isinstance(nodes, list) and nodes and all(isinstance(n, str) for n in nodes):
        node_ids = list(nodes)
    else:
        raise ScenarioError("%s: `nodes` is a count or a list of node ids" % where)
    if len(set(node_ids)) != len(node_ids):
        raise ScenarioError("%s: node ids repeat" % where)
    duration = float(_num(data.get("duration_s"), where + ": duration_s", 0))
    rng = random.Random(_num(data.get("seed", 1), where + ": seed", integer=True))
    events = []
    timeline = data.get("timeline", [])
    if not isinstance(timeline, list):
        raise ScenarioError("%s: `timeline` is an array of tables ([[timeline]])" % where)
    for i, entry in enumerate(timeline):
        events += _events(entry, i, node_ids, duration, scale, rng, "%s: timeline[%d]" % (where, i))
    events.sort(key=lambda e: (e.at, e.index))
    return Scenario(
        name=name, description=str(data.get("description", "")), node_ids=node_ids,
        interval_s=float(_num(data.get("interval_s", 0.5), where + ": interval_s", 0.05)),
        duration_s=duration,
        drain_timeout_s=float(_num(data.get("drain_timeout_s", 60), where + ": drain_timeout_s", 1)),
        warmup_timeout_s=float(_num(data.get("warmup_timeout_s", 30), where + ": warmup_timeout_s", 1)),
        seed=data.get("seed", 1), environment=_table(data, "environment", where),
        thresholds=_table(data, "thresholds", where), events=events,
        expect=_expectations(data.get("expect", {}), where), quick=quick,
        broker_persistence=_bool(data.get("broker_persistence", True), where + ": broker_persistence"))


def _bool(value, where):
    if not isinstance(value, bool):
        raise ScenarioError("%s: true or false, got %r" % (where, value))
    return value


def _table(data, key, where):
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ScenarioError("%s: [%s] must be a table" % (where, key))
    return value


def _expectations(table, where):
    if not isinstance(table, dict):
        raise ScenarioError("%s: [expect] must be a table" % where)
    out = []
    for metric, spec in table.items():
        if isinstance(spec, bool) or isinstance(spec, (int, float)):
            out.append(Expectation(metric, "==", float(spec)))
            continue
        m = _EXPECTATION.match(spec) if isinstance(spec, str) else None
        if not m:
            raise ScenarioError("%s: expect.%s: a number (==) or a string like \"<= 20\", got %r"
                                % (where, metric, spec))
        out.append(Expectation(metric, m.group(1), float(m.group(2))))
    return out


def _instants(entry, duration, scale, rng, where):
    """The times (seconds from the start of the timeline, scaled) at which this entry happens."""
    given = [k for k in ("at", "every", "random") if k in entry]
    if len(given) != 1:
        raise ScenarioError("%s: give exactly one of `at`, `every`, `random`" % where)
    if "at" in entry:
        at = entry["at"]
        times = at if isinstance(at, list) else [at]
        return [_num(t, where + ": at", 0) * scale for t in times]
    if "every" in entry:
        every = _num(entry["every"], where + ": every", 0.01)
        start = _num(entry.get("from", every), where + ": from", 0)
        until = _num(entry.get("until", duration / scale if scale else duration), where + ": until", 0)
        n = int(math.floor((until - start) / every + 1e-9)) + 1 if until >= start else 0
        return [(start + k * every) * scale for k in range(n)]
    r = entry["random"]
    if not isinstance(r, dict) or set(r) - {"count", "within", "min_gap"}:
        raise ScenarioError("%s: random = {count = N, within = [FROM, TO], min_gap = S}" % where)
    count = _num(r.get("count"), where + ": random.count", 1, True)
    within = r.get("within", [0, duration / scale if scale else duration])
    if not (isinstance(within, list) and len(within) == 2):
        raise ScenarioError("%s: random.within = [FROM, TO]" % where)
    lo, hi = (_num(x, where + ": random.within", 0) for x in within)
    gap = _num(r.get("min_gap", 0), where + ": random.min_gap", 0)
    if hi <= lo or gap * (count - 1) > hi - lo:
        raise ScenarioError("%s: %d instants %ss apart do not fit in [%s, %s]" % (where, count, gap, lo, hi))
    # spread by construction: draw in the room left after the gaps, then add them back (no retry loop)
    raw = sorted(rng.uniform(0, (hi - lo) - gap * (count - 1)) for _ in range(count))
    return [(lo + x + k * gap) * scale for k, x in enumerate(raw)]


def _events(entry, index, node_ids, duration, scale, rng, where):
    if not isinstance(entry, dict):
        raise ScenarioError("%s: must be a table" % where)
    name = entry.get("do")
    action = ACTIONS.get(name)
    if action is None:
        raise ScenarioError("%s: unknown action %r (known: %s)" % (where, name, ", ".join(sorted(ACTIONS))))
    unknown = set(entry) - _EVENT_KEYS - set(action.params)
    if unknown:
        raise ScenarioError("%s: %s takes no %s (its parameters: %s)"
                            % (where, name, sorted(unknown), ", ".join(sorted(action.params)) or "none"))
    params = {}
    for key, (typ, default) in action.params.items():
        if key in entry:
            value = entry[key]
            if typ is float:
                value = float(_num(value, "%s: %s" % (where, key)))
            elif typ is int:
                value = _num(value, "%s: %s" % (where, key), integer=True)
            elif not isinstance(value, typ):
                raise ScenarioError("%s: %s must be a %s" % (where, key, typ.__name__))
            params[key] = value
        elif default is None:
            raise ScenarioError("%s: %s needs `%s`" % (where, name, key))
        elif action.name != "environment":
            params[key] = default
    if name == "environment" and not params:
        raise ScenarioError("%s: environment sets at least one of %s" % (where, ", ".join(action.params)))
    if "direction" in params and params["direction"] not in ("up", "down", "both"):
        raise ScenarioError("%s: direction is up, down or both" % where)
    if name == "sensor" and params["fault"] not in SENSOR_FAULTS:
        raise ScenarioError("%s: sensor fault is one of %s" % (where, ", ".join(SENSOR_FAULTS)))
    if name == "power_loss":
        window = params["after_seal_ms"]
        if window and not (len(window) == 2 and all(isinstance(x, (int, float)) for x in window)
                           and 0 <= window[0] <= window[1]):
            raise ScenarioError("%s: after_seal_ms = [FROM, TO] in milliseconds" % where)
    duration_for = entry.get("for", action.default_for)
    if duration_for is not None:
        if not action.lasting:
            raise ScenarioError("%s: %s is instantaneous (no `for`)" % (where, name))
        duration_for = float(_num(duration_for, where + ": for", 0)) * scale
    targets = entry.get("nodes", "all")
    if targets not in ("all", "random"):
        if not (isinstance(targets, list) and targets and all(t in node_ids for t in targets)):
            raise ScenarioError("%s: nodes is \"all\", \"random\" or a list of this scenario's node ids %s"
                                % (where, node_ids))
    out = []
    for t in _instants(entry, duration, scale, rng, where):
        if t > duration + 1e-9:
            raise ScenarioError("%s: at %gs, after the timeline ends (duration_s %g)" % (where, t, duration))
        if targets == "all":
            chosen = tuple(node_ids)
        elif targets == "random":
            chosen = (rng.choice(node_ids),)
        else:
            chosen = tuple(targets)
        out.append(Event(t, action, chosen, duration_for, dict(params), index))
    return out


# -- running ---------------------------------------------------------------------------------------------

@dataclass
class _Recovery:
    node: str
    cleared: float  # monotonic
    action: str
    criterion: str
    recovered: float | None = None
    interrupted: bool = False  # another fault hit the node before it recovered: not a measurement


class Runner:
    """One run of a scenario on a fresh rig under `workdir`. Use run() unless you need the pieces."""

    def __init__(self, scenario, workdir, log=None):
        self.sc = scenario
        self.workdir = Path(workdir)
        self.log = log or (lambda text: None)
        self.rig = None
        self.delivery = None
        self.links = {}  # node -> FaultProxy
        self.recoveries = []
        self.fault_log = []  # (t, "begin"/"end", action, nodes)
        self._active = {}  # (node | "*", key) -> count of overlapping faults
        self._clock = {}  # node -> clock offset in seconds
        self._t0 = None
        self._abort = threading.Event()
        self._pending_ends = []  # (end time or None, Event) of lasting faults not yet undone
        self._power_losses = 0
        self._kills = {}  # node -> [time of each power cut]
        self.resealed = []
        self._sensor_windows = []  # [node, fault, began, ended or None, grace]

    # -- the rig ----------------------------------------------------------------------------------------

    def _setup(self):
        from .delivery import Delivery  # imports the ingest store: only when a scenario runs
        from .faults import FaultProxy
        from .rig import Rig

        sc = self.sc
        self.rig = Rig(self.workdir / "rig", sc.node_ids, interval_s=sc.interval_s, thresholds=sc.thresholds,
                       environment=sc.environment, autostart=[], broker_persistence=sc.broker_persistence,
                       clock_file=any(ev.action.name == "clock_jump" for ev in sc.events))
        self.rig.start()
        # the store listens before any node publishes: nothing sealed can precede it
        self.delivery = Delivery(self.rig, self.workdir / "ingest.sqlite").start()
        for node_id in sc.node_ids:
            link = FaultProxy("127.0.0.1", self.rig.broker.port, name=node_id).start()
            self.links[node_id] = link
            self.rig.add_node(node_id, broker_port=link.port, probe=True)

    def _teardown(self):
        # every process we started goes, by pid: nodes, sensor bus and broker (rig), then relays, store
        if self.rig is not None:
            self.rig.stop()
            for node_id, vnode in self.rig.nodes.items():  # kept with --keep: what each node said
                (self.workdir / ("console-%s.log" % node_id)).write_text("\n".join(vnode.lines) + "\n")
        for link in self.links.values():
            link.stop()
        if self.delivery is not None:
            self.delivery.stop()

    # -- time -------------------------------------------------------------------------------------------

    def _now(self):
        return time.monotonic() - self._t0

    def _wait_until(self, t):
        """The scenario's clock: block until `t` seconds into the timeline (this is the timeline itself,
        not a synchronisation: outcomes are waited for with bounded waits on events)."""
        left = t - self._now()
        if left > 0 and self._abort.wait(left):
            raise KeyboardInterrupt

    # -- faults -----------------------------------------------------------------------------------------

    def _mark(self, node, key, delta):
        k = (node, key)
        self._active[k] = self._active.get(k, 0) + delta
        n = self._active[k]
        if n <= 0:
            del self._active[k]
        return n

    def _faulted(self, node):
        return any(n in (node, "*") for n, _ in self._active)

    def _begin(self, ev):
        a, p = ev.action, ev.params
        self.fault_log.append((round(self._now(), 3), "begin", a.name, list(ev.nodes), p))
        self.log("%7.2fs  %s %s%s" % (self._now(), a.name, ",".join(ev.nodes) if a.scope != "fleet" else "fleet",
                                       " for %.1fs" % ev.duration if ev.duration else ""))
        if a.scope != "none":
            self._interrupt(self.sc.node_ids if a.scope == "fleet" else ev.nodes)
        if a.scope == "fleet":
            if self._mark("*", a.name, +1) == 1:
                if a.name == "ingest_down":
                    self.delivery.pause()
                else:
                    self.rig.stop_broker(kill=p.get("kill", False))
        for node in ev.nodes if a.scope != "fleet" else ():
            key = self._key(ev)
            first = self._mark(node, key, +1) == 1 if ev.lasting else True
            if first:
                self._apply(a.name, node, p, on=True)
        if ev.lasting:
            end = ev.at + ev.duration if ev.duration is not None else None
            self._pending_ends.append((end, ev))
        elif a.scope == "node":
            for node in ev.nodes:
                self._cleared(node, a)

    def _key(self, ev):
        p = ev.params
        return (ev.action.name, p.get("direction"), p.get("fault"))

    def _end(self, ev):
        a = ev.action
        self.fault_log.append((round(self._now(), 3), "end", a.name, list(ev.nodes), {}))
        if a.scope == "fleet":
            if self._mark("*", a.name, -1) == 0:
                if a.name != "ingest_down":
                    self.rig.start_broker()
                # ingest cannot start against a stopped broker: it comes back with the broker, as a
                # supervisor restarting `fieldnode ingest` would bring it back
                if ("*", "ingest_down") not in self._active and ("*", "broker_down") not in self._active:
                    self.delivery.resume()
                for node in self.sc.node_ids:
                    self._cleared(node, a)
            return
        for node in ev.nodes:
            if self._mark(node, self._key(ev), -1) == 0:
                self._apply(a.name, node, ev.params, on=False)
                self._cleared(node, a)

    def _interrupt(self, nodes):
        """A new fault on `nodes`: a recovery still pending there can no longer be measured."""
        for r in self.recoveries:
            if r.node in nodes and r.recovered is None and not r.interrupted and self._resolve(r) is None:
                r.interrupted = True

    def _cleared(self, node, action):
        # recovery counts from the moment the node's last fault is gone
        if not self._faulted(node):
            self.recoveries.append(_Recovery(node, time.monotonic(), action.name, action.recovery))

    def _apply(self, name, node, p, on):
        link = self.links[node]
        if name == "link_down":
            link.refuse(on)
            if on:
                link.drop()
        elif name == "drop":
            link.drop()
        elif name == "blackhole":
            link.blackhole(p["direction"], on)
            if not on and p["reset"]:
                link.drop()
        elif name == "latency":
            link.latency(p["ms"] if on else 0, p["direction"])
        elif name == "power_loss":
            if on:
                self._power_off(node, p["after_seal_ms"])
            else:
                self.rig.nodes[node].start()
        elif name == "sensor":
            sensor = self.rig.sensors[node]
            fault = p["fault"]
            if on:
                self._sensor_windows.append([node, fault, time.monotonic(), None, p["grace"]])
            else:
                for w in self._sensor_windows:
                    if w[:2] == [node, fault] and w[3] is None:
                        w[3] = time.monotonic()
            if fault == "chip_id":
                sensor.chip_id = p["chip_id"] if on else CHIP_ID
            else:
                setattr(sensor, fault, on)
        elif name == "clock_jump":
            self._clock[node] = self._clock.get(node, 0) + (p["seconds"] if on else -p["seconds"])
            # the Unix HAL adds this to the host clock (firmware/node/hal/unix.py)
            (self.rig.nodes[node].folder / "clock_offset").write_text("%d\n" % round(self._clock[node]))
        elif name == "environment":
            self.rig.sensors[node].set_environment(**p)

    def _power_off(self, node, window):
        vnode = self.rig.nodes[node]
        if window:
            # aim at the flash writes that follow a seal: wait (bounded) for the next seal, then a random delay
            start = len(vnode.lines)
            try:
                vnode.wait_for_line(r"^bench-probe: sealed ", timeout=max(3 * self.sc.interval_s, 2),
                                    start=start)
            except NodeProcessError:
                pass  # a node that seals nothing (or died) loses its power all the same
            delay = self._rng.uniform(window[0], window[1]) / 1000.0
            if delay:
                self._abort.wait(delay)
        vnode.kill()
        self._kills.setdefault(node, []).append(time.monotonic())
        self._power_losses += 1

    # -- the run ----------------------------------------------------------------------------------------

    def run(self):
        sc = self.sc
        self._rng = random.Random(sc.seed * 7919 + 1)
        started = time.monotonic()
        try:
            self._setup()
            # warm-up: every node reaches the store once before any fault (a node that dies ends it early)
            nodes = self.rig.nodes
            self.delivery.wait_for(lambda d: all(d.stored_count(n) for n in sc.node_ids)
                                   or not all(nodes[n].running for n in sc.node_ids), sc.warmup_timeout_s)
            silent = [n for n in sc.node_ids if not self.delivery.stored_count(n)]
            if silent:
                node = nodes[silent[0]]
                last = next((line for line in reversed(node.lines) if line.strip()), "nothing")
                raise ScenarioError("warm-up: nothing from %s reached the store within %ss (node %s); its "
                                    "last console line: %s" % (", ".join(silent), sc.warmup_timeout_s,
                                                               "running" if node.running else "exited", last))
            self._t0 = time.monotonic()
            self._timeline()
            cutoff = time.monotonic()
            self.log("%7.2fs  timeline over: faults cleared, draining (up to %.0fs)" % (self._now(),
                                                                                       sc.drain_timeout_s))
            for _, ev in sorted(self._pending_ends, key=lambda x: x[1].at):
                self._end(ev)
            self._pending_ends = []
            produced_at_cutoff = {k: v for k, v in self._seals().items() if v["time"] <= cutoff}
            drained = self.delivery.wait_for(lambda d: self._drained(produced_at_cutoff), sc.drain_timeout_s)
            drain_s = time.monotonic() - cutoff
            self.log("%7.2fs  %s after %.1fs" % (self._now(), "drained" if drained else "drain timed out",
                                                 drain_s))
            report = self._report(produced_at_cutoff, drained, drain_s)
        finally:
            self._teardown()
        report["wall_s"] = round(time.monotonic() - started, 2)
        return report

    def _timeline(self):
        events = list(self.sc.events)
        while events or any(end is not None for end, _ in self._pending_ends):
            ends = [(end, ev) for end, ev in self._pending_ends if end is not None]
            next_end = min(ends, key=lambda x: x[0]) if ends else None
            if events and (next_end is None or events[0].at <= next_end[0]):
                ev = events.pop(0)
                self._wait_until(ev.at)
                self._begin(ev)
            else:
                end, ev = next_end
                if end > self.sc.duration_s:
                    break  # the drain clears it
                self._wait_until(end)
                self._pending_ends.remove(next_end)
                self._end(ev)
        self._wait_until(self.sc.duration_s)

    def _seals(self):
        """{(node, seq): {"digest", "type", "boot", "time"}} from every node's probe lines: the last seal of
        each number. Earlier seals of the same number (a reboot handed it out again) are in self.resealed."""
        out = {}
        resealed = []
        for node_id, vnode in self.rig.nodes.items():
            lines, times = list(vnode.lines), list(vnode.line_times)
            for line, t in zip(lines, times):
                m = _PROBE_SEAL.match(line)
                if m:
                    key = (node_id, int(m.group(3)))
                    if key in out:
                        resealed.append((key, out[key]))
                    out[key] = {"type": _TYPES.get(int(m.group(1)), m.group(1)), "boot": int(m.group(2)),
                                "digest": m.group(4), "time": t}
        self.resealed = resealed
        return out

    def _declared_drops(self):
        """{(node, seq)} the nodes said they threw away unsent (a full queue drops its oldest record)."""
        out = set()
        for node_id, vnode in self.rig.nodes.items():
            for line in list(vnode.lines):
                m = _DROPPED.search(line)
                if m:
                    out.add((node_id, int(m.group(1))))
        return out

    def _uncommitted(self, seals):
        """Split the seals whose number a later boot used again into (uncommitted, overwritten).

        Uncommitted: sealed less than one interval before a power cut, and the last thing that boot sealed
        — the node was cut between sealing and storing it, so the message never
        existed outside RAM (the same as a cut a moment before the reading) and nobody can miss it.
        Overwritten: anything else — a message that was kept and then replaced: a loss."""
        uncommitted, overwritten = [], []
        last = {}  # (node, boot) -> time of the last seal of that boot, superseded ones included
        for (node, _), s in list(seals.items()) + self.resealed:
            last[node, s["boot"]] = max(last.get((node, s["boot"]), s["time"]), s["time"])
        for key, old in self.resealed:
            node = key[0]
            cut = min((k for k in self._kills.get(node, ()) if k >= old["time"]), default=None)
            final = old["time"] >= last[node, old["boot"]]
            if cut is not None and cut - old["time"] <= self.sc.interval_s and final:
                uncommitted.append(key)
            else:
                overwritten.append(key)
        return uncommitted, overwritten

    def _drained(self, produced):
        stored = self.delivery.stored()
        if any(k not in stored for k in produced):
            return False
        return all(r.interrupted or self._resolve(r) is not None for r in self.recoveries)

    def _resolve(self, rec):
        if rec.recovered is not None or rec.interrupted:
            return rec.recovered
        seals = None
        for a in self.delivery.arrivals:
            if a.node != rec.node or a.outcome != "stored" or a.time < rec.cleared:
                continue
            if rec.criterion == "valid":
                if a.type != "reading" or a.sensor_status:
                    continue
                seals = seals if seals is not None else self._seals()
                sealed = seals.get((a.node, a.seq))
                if sealed is None or sealed["time"] < rec.cleared:
                    continue  # a backlog reading from before the fault cleared proves nothing
            rec.recovered = a.time
            return a.time
        return None

    # -- the numbers ------------------------------------------------------------------------------------

    def _report(self, produced, drained, drain_s):
        sc, d = self.sc, self.delivery
        seals = self._seals()  # everything sealed, also after the cutoff
        kept = d.digests()  # what the store holds, read back from its database: (node, seq) -> digest
        arrivals = d.stored()  # when each arrived (the Ingestor's events)
        stats = d.store.stats()
        uncommitted, overwritten = self._uncommitted(seals)
        received = {k for k in produced if k in kept}
        declared = self._declared_drops()
        # a list, not a set: an overwritten message and the one that replaced it share (node, seq)
        lost = sorted([k for k in produced if k not in kept and k not in declared] + overwritten)
        altered = sorted(k for k, h in kept.items() if k in seals and seals[k]["digest"] != h)
        unexpected = sorted(k for k in kept if k not in seals)
        for r in self.recoveries:
            self._resolve(r)
        times = [r.recovered - r.cleared for r in self.recoveries if r.recovered is not None]
        unrecovered = [r for r in self.recoveries if r.recovered is None and not r.interrupted]
        gaps = [list(g) for g in d.store.gaps()]
        silent = silently_lost(lost, gaps)
        # numbers in the store's gaps that the node never sealed (reserved ahead, skipped after a reboot)
        skipped = sum(1 for node, first, last in gaps for q in range(first, last + 1) if (node, q) not in seals)
        per_node = {}
        for n in sc.node_ids:
            vnode = self.rig.nodes[n]
            mine = [a for k, a in arrivals.items() if k[0] == n]
            per_node[n] = {
                "produced": sum(1 for k in produced if k[0] == n) + sum(1 for k in overwritten if k[0] == n),
                "received": sum(1 for k in received if k[0] == n),
                "lost": [k[1] for k in lost if k[0] == n],
                "boots": sum(1 for line in vnode.lines if line == _PROBE_UP),
                "connections": self.links[n].connections,
                "flagged_readings": sum(1 for a in mine if a.type == "reading" and a.sensor_status),
            }
        skew = [abs(a.timestamp - a.wall) for a in arrivals.values()]
        unflagged = self._unflagged(seals, arrivals)
        report = {
            "scenario": sc.name, "quick": sc.quick, "seed": sc.seed, "nodes": len(sc.node_ids),
            "interval_s": sc.interval_s, "duration_s": round(sc.duration_s, 2),
            "produced": len(produced) + len(overwritten), "received": len(received), "duplicates": stats["duplicates"],
            "lost": len(lost), "lost_silently": len(silent), "dropped_reported": len(declared & set(produced)),
            "uncommitted": len(uncommitted), "overwritten": len(overwritten),
            "gaps": gaps, "gap_count": len(gaps), "skipped_seqs": skipped,
            "max_recovery_s": round(max(times), 2) if times and not unrecovered else None,
            "recoveries": len(times), "unrecovered": len(unrecovered),
            "interrupted_recoveries": sum(1 for r in self.recoveries if r.interrupted),
            "conflicts": stats["conflicts"], "altered": len(altered), "unexpected": len(unexpected),
            "rejected": stats["rejected"], "ingest_errors": len(d.errors),
            "sealed_total": len(seals), "stored_total": stats["stored"],
            "drained": drained, "drain_s": round(drain_s, 2),
            "reconnects": sum(p["connections"] for p in per_node.values()) - len(sc.node_ids),
            "boots": sum(p["boots"] for p in per_node.values()),
            # a node process that is gone at the end although the bench powered it up again
            "crashed": sum(1 for n in sc.node_ids if not self.rig.nodes[n].running),
            "power_losses": self._power_losses,
            "flagged_readings": sum(p["flagged_readings"] for p in per_node.values()),
            "unflagged_in_sensor_fault": len(unflagged), "unflagged_readings": unflagged[:20],
            "alarms": sum(1 for a in arrivals.values() if a.type == "alarm"),
            "max_clock_skew_s": round(max(skew), 1) if skew else None,
            "per_node": per_node,
            "faults": self.fault_log,
            "lost_messages": [list(k) for k in lost][:50],
            "unrecovered_faults": [{"node": r.node, "action": r.action,
                                    "cleared_at_s": round(r.cleared - self._t0, 2)} for r in unrecovered],
            "slowest_recoveries": [
                {"node": r.node, "action": r.action, "cleared_at_s": round(r.cleared - self._t0, 2),
                 "recovery_s": round(r.recovered - r.cleared, 2)}
                for r in sorted((r for r in self.recoveries if r.recovered is not None),
                                key=lambda r: r.cleared - r.recovered)[:5]],
        }
        checks = [Expectation(m, op, v) for m, op, v in INVARIANTS] + list(sc.expect)
        report["expectations"] = [e.check(report) for e in checks]
        report["ok"] = all(e["ok"] for e in report["expectations"])
        return report

    def _unflagged(self, seals, stored):
        """[(node, seq, fault)]: stored readings sealed while a sensor fault was on (after its grace) that
        claim to be valid."""
        out = []
        for node, fault, began, ended, grace in self._sensor_windows:
            ended = ended if ended is not None else math.inf
            inside = sorted((v["time"], k) for k, v in seals.items()
                            if k[0] == node and v["type"] == "reading" and began <= v["time"] <= ended)
            for _, k in inside[grace:]:
                a = stored.get(k)
                if a is not None and a.sensor_status == 0:
                    out.append([node, k[1], fault])
        return out


def silently_lost(lost, gaps):
    """The (node, seq) of `lost` that no gap (node, first, last) of the store covers: missing without the
    store showing it, which the users' rule never allows (a loss must be visible)."""
    return [k for k in lost if not any(g[0] == k[0] and g[1] <= k[1] <= g[2] for g in gaps)]


def run(scenario, workdir, log=None):
    """Run `scenario` on a fresh rig under `workdir`; the report (see docs/hil.md). Every process started
    is stopped, by pid, whatever happens."""
    return Runner(scenario, workdir, log).run()


def summary(report):
    """One line: verdict and the headline numbers."""
    failed = [e for e in report["expectations"] if not e["ok"]]
    verdict = "ok" if not failed else "FAILED " + ", ".join(
        "%s %s %g (got %s)" % (e["metric"], e["op"], e["value"], e["actual"]) for e in failed)
    return ("%s%s: %s; produced %d, received %d, lost %d, duplicates %d, gaps %d, max recovery %s"
            % (report["scenario"], " (quick)" if report["quick"] else "", verdict, report["produced"],
               report["received"], report["lost"], report["duplicates"], report["gap_count"],
               "%.2fs" % report["max_recovery_s"] if report["max_recovery_s"] is not None else "n/a"))
