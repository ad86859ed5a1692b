"""`fieldnode demo`: a throwaway fleet of virtual nodes whose environment drifts, monitored live."""
import json
import math
import tempfile
import threading
import time

from .bench.rig import Rig

# Cold-room style limits; every node drifts around its own base, and most cross a limit now and then.
THRESHOLDS = {
    "temperature_c": {"low": 15.0, "high": 25.0, "hysteresis": 0.5, "debounce": 2},
    "humidity_rh": {"low": 30.0, "high": 60.0, "hysteresis": 1.0, "debounce": 2},
}
PERIOD_S = 24.0


def environment_at(index, t):
    """The drifting environment of node `index` at `t` seconds into the demo."""
    phase = 2 * math.pi * (t / PERIOD_S + index / 3.0)
    return {"temperature_c": 21.0 + 1.5 * index + 5.0 * math.sin(phase),
            "humidity_rh": 45.0 + 18.0 * math.sin(phase / 2),
            "pressure_pa": 101325.0 + 300.0 * math.cos(phase)}


HEADER = "%-8s %-10s %5s %8s %8s %11s  %s" % ("time", "node", "seq", "temp °C", "hum %RH", "press Pa",
                                              "alarms / status")


def format_row(opened):
    """One line of the live table for a verified message."""
    d = opened.as_dict()
    clock = time.strftime("%H:%M:%S", time.gmtime(d["timestamp"])) if d.get("time") else "-"
    if d["type"] == "alarm":
        what = "%s %s at %.2f (limit %.2f)" % (d["alarm"], "RAISED" if d["raised"] else "cleared",
                                              d["value"], d["limit"])
        return "%-8s %-10s %5d %s" % (clock, d["node"], d["seq"], "ALARM " + what)

    def num(v, fmt):
        return fmt % v if v is not None else "-"
    return "%-8s %-10s %5d %8s %8s %11s  %s" % (
        clock, d["node"], d["seq"], num(d["temperature_c"], "%.2f"), num(d["humidity_rh"], "%.2f"),
        num(d["pressure_pa"], "%.2f"), " ".join(d["alarms"] + d["sensor_status"]))


def run_demo(nodes=3, duration=None, as_json=False, out=None, interval_s=1.0):
    """Run the demo until `duration` seconds pass (None: until KeyboardInterrupt). Returns the counts."""
    import sys

    out = out or sys.stdout
    node_ids = ["node-%d" % (i + 1) for i in range(nodes)]
    counts = {"verified": 0, "rejected": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def emit(text):
        with lock:
            out.write(text + "\n")
            out.flush()

    def on_message(opened, payload):
        counts["verified"] += 1
        emit(json.dumps(opened.as_dict(), sort_keys=True) if as_json else format_row(opened))

    def on_reject(node, topic, reason, payload):
        counts["rejected"] += 1
        if not as_json:
            emit("REJECTED %s on %s: %s" % (node, topic, reason))

    def on_status(node, text):
        if not as_json:
            emit("%-8s %-10s status %s" % ("", node, text))

    with tempfile.TemporaryDirectory(prefix="fieldnode-demo-") as tmp:
        started = time.monotonic()
        rig = Rig(tmp, node_ids, interval_s=interval_s, thresholds=THRESHOLDS, environment=environment_at(0, 0))
        with rig:
            for i, node_id in enumerate(node_ids):
                rig.sensors[node_id].set_environment(**environment_at(i, 0))

            def drift():
                while not stop.wait(0.5):
                    t = time.monotonic() - started
                    for i, node_id in enumerate(node_ids):
                        rig.sensors[node_id].set_environment(**environment_at(i, t))

            drifter = threading.Thread(target=drift, daemon=True)
            drifter.start()
            if not as_json:
                emit("fieldnode demo: %d nodes, broker 127.0.0.1:%d (mTLS; host listener :%d), fleet in %s"
                     % (nodes, rig.broker.port, rig.broker.host_port, rig.fleet.root))
                emit(HEADER)
            try:
                with rig.monitor(on_message=on_message, on_reject=on_reject, on_status=on_status):
                    stop.wait(duration)  # None: until Ctrl-C
            except KeyboardInterrupt:
                pass
            finally:
                stop.set()
                drifter.join(5)
    if not as_json:
        emit("fieldnode demo: %(verified)d verified messages, %(rejected)d rejected" % counts)
    return counts
