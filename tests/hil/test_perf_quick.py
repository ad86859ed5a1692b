"""`fieldnode bench perf --quick --json` runs every measurement of the performance budget end to end and reports
each figure with a sane type and value. Speed is never asserted here: the quick figures are small samples on a
shared machine (docs/performance.md has the real runs). Sizes are exact, so they are."""
import json
import subprocess
import sys
from pathlib import Path

FIELDNODE = str(Path(sys.executable).with_name("fieldnode"))


def test_bench_perf_quick_reports_every_figure(tmp_path):
    proc = subprocess.run([FIELDNODE, "bench", "perf", "--quick", "--json", "--keep", str(tmp_path / "perf")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["quick"] is True

    # sizes: exact
    assert r["sealed_reading_bytes"] == 58
    # PUBLISH: fixed header 2, topic length 2, topic, packet id 2, the sealed reading; then the 4-byte PUBACK
    wire = r["details"]["wire"]
    topic = wire["fieldnode"]["topic"]
    assert r["mqtt_bytes_per_reading"] == 2 + 2 + len(topic) + 2 + 58 + 4
    assert wire["tasmota"]["default"]["total_bytes"] > r["mqtt_bytes_per_reading"]
    assert wire["esphome"]["default"]["packets"] == 3
    assert isinstance(r["tls_bytes_per_reading"], int) and r["tls_bytes_per_reading"] > r["mqtt_bytes_per_reading"]
    assert r["redeploy_file_bytes"] == 0
    assert r["first_deploy_file_bytes"] > 10000

    # memory: plausible, and the heap did not grow
    assert isinstance(r["min_heap_kib"], int) and 16 <= r["min_heap_kib"] <= 256
    heap = r["details"]["heap"]
    assert heap["heap_end"] <= heap["heap_at_100"]
    assert isinstance(r["alloc_per_cycle_bytes"], int) and 0 < r["alloc_per_cycle_bytes"] < 100000
    assert r["details"]["alloc"]["alloc_parts_bytes"]["seal"] > 0

    # speed and scale: present and positive, never compared with a goal
    assert isinstance(r["node_cycle_ratio"], float) and r["node_cycle_ratio"] > 0
    assert isinstance(r["ingest_msgs_per_s"], int) and r["ingest_msgs_per_s"] > 0
    assert isinstance(r["ingest_ratio"], float) and r["ingest_ratio"] > 0
    assert r["details"]["ingest"]["ingest_rejected"] == 0
    assert isinstance(r["fleet_nodes_zero_loss"], int) and r["fleet_nodes_zero_loss"] >= 0
    step = r["details"]["fleet"]["fleet_steps"][0]
    assert step["lost"] == 0 and step["gap_count"] == 0 and step["produced"] > 0  # delivery, not speed
    assert isinstance(r["fleet_rss_per_node_kib"], int) and r["fleet_rss_per_node_kib"] > 0
    assert set(r["goals"]) <= set(r)
