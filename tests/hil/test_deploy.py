"""`fieldnode deploy` onto a virtual board: what lands on the board is the build, byte for byte; only what
changed is sent; libraries are installed when missing; config files are never touched; the deployed node
boots and publishes readings that verify; every deploy is on the audit record, failed ones too."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldnode import audit, paths
from fieldnode.bench.collector import Collector
from fieldnode.bench.rig import Rig
from fieldnode.bench.vboard import VBoardProcess
from fieldnode.board import Board
from fieldnode.deploy import DeployError, app_tree_sha256, build, deploy

FIELDNODE = str(Path(sys.executable).with_name("fieldnode"))
# what provisioning leaves on a board: deploy must never touch it
PROVISIONED = {"config.json": b'{"node_id": "cfg-1"}', "payload.key": b"k" * 32, "node.der": b"cert",
               "counters.dat": b"v1 3 96\n", "queue.dat": b"q"}


@pytest.fixture
def vboard(tmp_path):
    vb = VBoardProcess(tmp_path / "board").start()
    yield vb
    assert vb.stop() == 0


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_deploy_puts_the_build_on_the_board_and_a_second_deploy_sends_nothing(vboard, tmp_path):
    fleet = tmp_path / "fleet"
    first = deploy(vboard.port, fleet=fleet, operator="tess")
    fs = vboard.fs
    built = build(paths.FIRMWARE, "unix", "x64")
    assert sorted(first.files_copied) == sorted(list(built.app) + ["/lib/umqtt/simple.mpy"])
    for path, data in built.app.items():
        assert (fs / path.lstrip("/")).read_bytes() == data, path  # the vboard's flash is its folder
    assert (fs / "main.py").read_bytes() == (paths.FIRMWARE / "main.py").read_bytes()  # entry files stay source
    assert (fs / "node" / "app.mpy").read_bytes()[:2] == b"M\x06" and not (fs / "node" / "app.py").exists()
    assert not (fs / "unix").exists() and not (fs / "node" / "app.mpy.tmp").exists()
    assert first.libs_installed == ["umqtt.simple"]
    assert (fs / "lib" / "umqtt" / "simple.mpy").read_bytes()[:2] == b"M\x06"
    assert first.bytes_sent == sum(len(d) for d in built.app.values()) + (fs / "lib/umqtt/simple.mpy").stat().st_size
    assert first.app_sha256 == app_tree_sha256(built.app)
    # an unprovisioned node boots from what was deployed and says what it lacks
    assert first.first_line.startswith("fieldnode: config error: config.json not found")
    with Board(vboard.port) as board:  # the hashes on the board, computed there
        assert board.sha256_many(built.app) == {p: sha(d) for p, d in built.app.items()}
        mac = board.info()["mac"]

    # the CLI, as a technician runs it: unchanged tree -> 0 files, 0 bytes (issue 5's redeploy_file_bytes)
    proc = subprocess.run([FIELDNODE, "deploy", "--port", vboard.port, "--fleet", str(fleet), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert (second["bytes_sent"], second["files_copied"], second["libs_installed"]) == (0, [], [])
    assert second["app_sha256"] == first.app_sha256 and len(second["files_skipped"]) == len(first.files_copied)

    records = audit.read(fleet)
    assert [(r["action"], r["result"]) for r in records] == [("deploy", "ok"), ("deploy", "ok")]
    assert records[0]["operator"] == "tess" and records[0]["mac"] == mac
    assert records[0]["sha256"] == {"app": first.app_sha256} and records[1]["details"]["bytes_sent"] == 0
    assert audit.verify(fleet) == 2


def test_one_changed_file_is_the_one_copied_and_config_files_are_never_touched(vboard, tmp_path):
    fleet = tmp_path / "fleet"
    source = tmp_path / "firmware"
    shutil.copytree(paths.FIRMWARE, source, ignore=shutil.ignore_patterns("__pycache__"))
    fs = vboard.fs
    for name, data in PROVISIONED.items():
        (fs / name).write_bytes(data)
    deploy(vboard.port, source=source, fleet=fleet)
    # stale app files: a .py twin of a compiled module, a module the app no longer has
    (fs / "node" / "alarms.py").write_text("STALE = 1\n")
    (fs / "node" / "gone.mpy").write_bytes(b"M\x06stale")
    with open(source / "node" / "alarms.py", "a") as f:
        f.write("\nDEPLOY_TEST_MARK = 1\n")

    again = deploy(vboard.port, source=source, fleet=fleet)
    assert again.files_copied == ["/node/alarms.mpy"]
    assert again.bytes_sent == (fs / "node" / "alarms.mpy").stat().st_size
    assert sorted(again.files_removed) == ["/node/alarms.py", "/node/gone.mpy"]
    assert not (fs / "node" / "alarms.py").exists() and not (fs / "node" / "gone.mpy").exists()
    assert again.node_id == "cfg-1"  # read from the board's config.json, which stays as it was

    # and back to source form: the .mpy files give way to .py (the vice-versa twin rule)
    plain = deploy(vboard.port, source=source, fleet=fleet, compile=False)
    assert (fs / "node" / "alarms.py").read_bytes() == (source / "node" / "alarms.py").read_bytes()
    assert not list((fs / "node").rglob("*.mpy")) and "/node/alarms.mpy" in plain.files_removed
    for name, data in PROVISIONED.items():
        assert (fs / name).read_bytes() == data, name


def test_a_node_that_fails_to_start_fails_the_deploy_and_the_record_says_so(vboard, tmp_path):
    fleet = tmp_path / "fleet"
    source = tmp_path / "firmware"
    shutil.copytree(paths.FIRMWARE, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "node" / "app.py").write_text("raise RuntimeError('broken build')\n")
    with pytest.raises(DeployError, match="failed as it started: RuntimeError: broken build"):
        deploy(vboard.port, source=source, fleet=fleet, boot_timeout=15)
    record = audit.read(fleet)[-1]
    assert (record["action"], record["result"]) == ("deploy", "failed")
    assert "broken build" in record["details"]["error"] and len(record["sha256"]["app"]) == 64


def test_deploy_to_a_missing_port_is_one_line_exit_1_and_on_record(tmp_path):
    fleet = tmp_path / "fleet"
    proc = subprocess.run([FIELDNODE, "deploy", "--port", "/dev/ttyUSB97", "--fleet", str(fleet)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("fieldnode: no such port /dev/ttyUSB97: ") and proc.stderr.count("\n") == 1
    record = audit.read(fleet)[-1]
    assert (record["action"], record["result"], record["details"]["port"]) == ("deploy", "failed", "/dev/ttyUSB97")


def test_the_deployed_node_boots_and_publishes_a_reading_that_verifies(vboard, tmp_path):
    with Rig(tmp_path / "rig", ["dep-1"], interval_s=0.5, autostart=[]) as rig:
        rig.add_node("dep-1", start=False)  # certificate, payload key, config: the files provisioning writes
        folder = rig.workdir / "nodes" / "dep-1"
        with Board(vboard.port) as board:
            cfg = json.loads((folder / "config.json").read_text())
            cfg["bench"] = board.info()["bench"]  # the node reads the vboard's own emulated BME280
            files = {name: (folder / name).read_bytes() for name in ("ca.der", "node.der", "node.key.der",
                                                                      "payload.key")}
            files["config.json"] = json.dumps(cfg).encode()
            for name, data in files.items():
                board.write_file("/" + name, data)
        seen = Collector()
        with rig.monitor(**seen.callbacks()):
            result = deploy(vboard.port, fleet=rig.fleet.root)
            assert result.node_id == "dep-1" and result.first_line.startswith("fieldnode:")
            reading = seen.wait_for(lambda c: c.of("dep-1", "reading"), 30, "a reading from dep-1")[0].as_dict()
            # redeploying an unchanged tree over the running node sends nothing and the node comes back
            again = deploy(vboard.port, fleet=rig.fleet.root)
            assert (again.bytes_sent, again.files_copied) == (0, [])
            seen.wait_for(lambda c: [m for m in c.of("dep-1", "reading") if m.boot > reading["boot"]], 30,
                          "a reading from dep-1 after the redeploy")
        assert abs(reading["temperature_c"] - 21.0) <= 0.05 and abs(reading["humidity_rh"] - 45.0) <= 0.1
        assert not seen.rejected
        for name, data in files.items():
            assert (vboard.fs / name).read_bytes() == data, name
        records = audit.read(rig.fleet.root)
        assert [(r["node"], r["result"]) for r in records] == [("dep-1", "ok"), ("dep-1", "ok")]
