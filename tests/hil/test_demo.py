"""`fieldnode demo` as a user runs it: verified readings from every node, exit 0, nothing left behind."""
import json
import os
import subprocess
import sys
from pathlib import Path


def _processes_mentioning(marker):
    """Pids whose command line or working directory mentions marker (the demo's temporary folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if marker in cmdline or marker in cwd:
            found.append((proc.name, cmdline))
    return found


def test_demo_json_shows_verified_readings_from_every_node_and_cleans_up(tmp_path):
    exe = Path(sys.executable).with_name("fieldnode")
    # the demo's throwaway folder lands under tmp_path, so leftovers of this run are recognisable
    proc = subprocess.run([str(exe), "demo", "--nodes", "2", "--duration", "6", "--json", "--interval", "0.5"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    readings = [r for r in rows if r["type"] == "reading"]
    assert {r["node"] for r in readings} == {"node-1", "node-2"}
    for r in readings:
        assert {"node", "seq", "temperature_c", "humidity_rh", "pressure_pa"} <= r.keys()
        assert r["temperature_c"] is not None
    for node in ("node-1", "node-2"):
        seqs = [r["seq"] for r in rows if r["node"] == node]
        assert seqs == sorted(set(seqs)), "duplicated or reordered sequence numbers"
    assert _processes_mentioning(str(tmp_path)) == []


def test_demo_rejects_bad_options_with_one_line():
    exe = Path(sys.executable).with_name("fieldnode")
    proc = subprocess.run([str(exe), "demo", "--nodes", "0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--nodes" in proc.stderr
