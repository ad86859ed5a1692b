"""Batch provisioning (fieldnode.batch) against fake boards: the CSV is checked whole before anything
happens; a re-run skips finished rows and resumes interrupted ones without a second certificate."""
import os
import shutil
import signal

import pytest

from fieldnode import audit, ca
from fieldnode.batch import read_csv, run_batch
from fieldnode.errors import UsageError
from fieldnode.fleet import Fleet
from fieldnode.inventory import Inventory
from fieldnode.provision import Pending, Settings
from provision_fakes import FakeBench

N = 6


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template") / "fleet"
    ca.init(Fleet(root), broker=("127.0.0.1", 8883))
    return root


@pytest.fixture
def fleet(template, tmp_path):
    shutil.copytree(template, tmp_path / "fleet")
    return Fleet(tmp_path / "fleet")


@pytest.fixture
def bench():
    b = FakeBench()
    for i in range(N):
        b.add("/dev/ttyV%d" % i)
    return b


def write_csv(tmp_path, lines, name="nodes.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def standard_csv(tmp_path, n=N):
    return write_csv(tmp_path, ["node_id,port,board,bench_i2c"] +
                     ["n-%02d,/dev/ttyV%d,unix,127.0.0.1:7000" % (i, i) for i in range(n)])


def certs_per_node(fleet):
    with Inventory(fleet.inventory_db) as inv:
        rows = inv.certificates(kind="node")
    out = {}
    for r in rows:
        out[r["subject"]] = out.get(r["subject"], 0) + 1
    return out


def run(fleet, path, bench, **kw):
    reports = []
    summary = run_batch(fleet, read_csv(path, fleet), csv_path=path, open_board=bench.open,
                        on_result=reports.append, **kw)
    return summary, reports


@pytest.mark.parametrize("lines, message", [
    (["node_id,port,bord", "n-1,/dev/ttyV0,unix"], r"nodes.csv line 1: unknown column 'bord' \(known: node_id"),
    (["node_id,board", "n-1,unix"], "nodes.csv line 1: the header has no port column"),
    (["node_id,port", "n-1,/dev/ttyV0", "n 2,/dev/ttyV1"],
     r"nodes.csv row 3, column node_id: invalid node id 'n 2': use 1-32 of"),
    (["node_id,port", "n-1,/dev/ttyV0", "n-1,/dev/ttyV1"], "nodes.csv row 3, column node_id: n-1 is already on row 2"),
    (["node_id,port", "n-1,/dev/ttyV0", "n-2,/dev/ttyV0"], "nodes.csv row 3, column port: /dev/ttyV0 is already"),
    (["node_id,port,interval", "n-1,/dev/ttyV0,ten"], "nodes.csv row 2, column interval: 'ten' is not a number"),
    (["node_id,port,board", "n-1,/dev/ttyV0,esp32-devkit"], "nodes.csv row 2, column board: unknown board"),
    (["node_id,port,wifi_psk_file", "n-1,/dev/ttyV0,missing.txt"],
     "nodes.csv row 2, column wifi_psk_file: cannot read .*missing.txt"),
    (["node_id,port,thresholds", "n-1,/dev/ttyV0,bad.json"], "nodes.csv row 2, column thresholds: .*not valid JSON"),
    (["node_id,port,board,bench_i2c,thresholds", "n-1,/dev/ttyV0,unix,h:1,t.json"],
     "nodes.csv row 2: invalid node config: .*low must be below"),
    (["node_id,port", "n-1,/dev/ttyV0,extra"], "nodes.csv row 2: 3 cells where the header has 2 columns"),
    (["node_id,port,broker", "n-1,/dev/ttyV0,nohost"], "nodes.csv row 2, column broker: expected HOST:PORT"),
    (["# only a comment"], "nodes.csv: no rows"),
    (["node_id,port,board", "n-1,/dev/ttyV0,esp32-devkitc"], "nodes.csv row 2: an ESP32 node needs Wi-Fi"),
])
def test_a_bad_csv_names_row_and_column_and_changes_nothing(fleet, tmp_path, lines, message):
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "t.json").write_text('{"temperature_c": {"low": 9, "high": 1}}')
    path = write_csv(tmp_path, lines)
    before = (fleet.root / "audit.log").exists()
    with pytest.raises(UsageError, match=message) as err:
        read_csv(path, fleet)
    assert "\n" not in str(err.value)
    assert certs_per_node(fleet) == {} and (fleet.root / "audit.log").exists() == before


def test_relative_files_in_cells_are_next_to_the_csv(fleet, tmp_path):
    sub = tmp_path / "site"
    sub.mkdir()
    (sub / "psk.txt").write_text("correct horse battery\n")
    (sub / "limits.json").write_text('{"temperature_c": {"low": 2, "high": 8}}')
    path = write_csv(sub, ["node_id,port,board,wifi_ssid,wifi_psk_file,thresholds,interval",
                           "n-1,/dev/ttyUSB0,esp32-devkitc,plant,psk.txt,limits.json,30"])
    (row,) = read_csv(path, fleet)
    s = row.settings
    assert (s.wifi_ssid, s.wifi_psk, s.interval_s) == ("plant", "correct horse battery", 30)
    assert s.thresholds["temperature_c"]["high"] == 8 and row.line == 2


def test_batch_provisions_every_row_then_skips_them(fleet, tmp_path, bench):
    path = standard_csv(tmp_path)
    summary, reports = run(fleet, path, bench)
    assert summary["ok"] and summary["provisioned"] == N and summary["failed"] == 0
    assert sorted(r["node_id"] for r in reports) == ["n-%02d" % i for i in range(N)]
    assert all(r["result"] == "provisioned" and r["cert_serial"] for r in reports)
    summary, reports = run(fleet, path, bench)
    assert summary["skipped"] == N and {r["reason"] for r in reports} == {"already provisioned"}
    assert certs_per_node(fleet) == {"n-%02d" % i: 1 for i in range(N)}
    actions = [r["action"] for r in audit.read(fleet.root)]
    assert actions.count("provision") == N and actions.count("batch") == 2


def test_a_failing_row_fails_alone_and_a_rerun_finishes_it(fleet, tmp_path, bench):
    path = standard_csv(tmp_path)
    bench.boards["/dev/ttyV2"].fail_on_write = "config.json"
    summary, reports = run(fleet, path, bench, jobs=3)
    assert not summary["ok"] and summary["failed"] == 1 and summary["provisioned"] == N - 1
    (bad,) = [r for r in reports if r["result"] == "failed"]
    assert bad["node_id"] == "n-02" and bad["row"] == 4 and "check the cable" in bad["error"]
    assert audit.read(fleet.root)[-1]["result"] == "failed: 1 of %d rows failed" % N
    bench.boards["/dev/ttyV2"].fail_on_write = None
    summary, reports = run(fleet, path, bench)
    assert summary["ok"] and summary["provisioned"] == 1 and summary["skipped"] == N - 1
    assert [r for r in reports if r["result"] == "provisioned"][0]["resumed"]
    assert certs_per_node(fleet) == {"n-%02d" % i: 1 for i in range(N)}


def test_a_batch_killed_midway_resumes_without_a_second_certificate(fleet, tmp_path, bench):
    path = standard_csv(tmp_path)
    writes = []

    def kill_on_the_13th_write(name):  # row 3 of 6, between its certificate and its config
        writes.append(name)
        if len(writes) == 13:
            os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:
        try:
            for b in bench.boards.values():
                b.on_write = kill_on_the_13th_write
            run(fleet, path, bench)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    counts = certs_per_node(fleet)
    assert counts == {"n-00": 1, "n-01": 1, "n-02": 1}
    assert Pending.dir_for(fleet, "n-02").exists()
    summary, reports = run(fleet, path, bench)
    assert summary["ok"]
    # the fork's board writes died with it, so rows 0-1 are done in the inventory and skipped here
    by_node = {r["node_id"]: r for r in reports}
    assert by_node["n-00"]["result"] == "skipped" and by_node["n-02"]["resumed"]
    assert certs_per_node(fleet) == {"n-%02d" % i: 1 for i in range(N)}


def test_rotate_batch_resumes_and_rotates_each_node_once(fleet, tmp_path, bench):
    path = standard_csv(tmp_path)
    run(fleet, path, bench)
    bench.boards["/dev/ttyV4"].fail_on_write = "node.k2.der"
    summary, _ = run(fleet, path, bench, rotate=True)
    assert summary["rotated"] == N - 1 and summary["failed"] == 1
    bench.boards["/dev/ttyV4"].fail_on_write = None
    summary, reports = run(fleet, path, bench, rotate=True)
    assert summary["ok"] and summary["rotated"] == 1 and summary["skipped"] == N - 1
    assert {r["reason"] for r in reports if r["result"] == "skipped"} == {"rotated earlier in this batch"}
    assert certs_per_node(fleet) == {"n-%02d" % i: 2 for i in range(N)}
    assert not list(fleet.pending_dir.glob("batch-rotate-*.json"))  # done: the journal is gone
    summary, _ = run(fleet, path, bench, rotate=True)  # a later, deliberate rotation rotates again
    assert summary["rotated"] == N and certs_per_node(fleet) == {"n-%02d" % i: 3 for i in range(N)}


def test_rows_without_a_board_column_use_the_defaults(fleet, tmp_path, bench):
    path = write_csv(tmp_path, ["node_id,port", "n-1,/dev/ttyV0"])
    rows = read_csv(path, fleet, defaults=Settings(bench_i2c="127.0.0.1:7000", interval_s=2))
    summary = run_batch(fleet, rows, csv_path=path, open_board=bench.open)
    assert summary["provisioned"] == 1
    import json
    cfg = json.loads(bench.boards["/dev/ttyV0"].fs["config.json"])
    assert cfg["interval_s"] == 2 and cfg["board"]["name"] == "unix"


def test_a_row_killed_after_its_commit_is_tidied_by_the_rerun(fleet, tmp_path, bench, monkeypatch):
    path = standard_csv(tmp_path, 3)
    removed = []

    def remove_then_die(self):
        removed.append(self.node_id)
        if len(removed) == 2:  # row 2 committed, its pending copy not yet removed
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.rmtree(self.path)

    pid = os.fork()
    if pid == 0:
        try:
            monkeypatch.setattr(Pending, "remove", remove_then_die)
            run(fleet, path, bench)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert Pending.dir_for(fleet, "n-01").exists()
    summary, reports = run(fleet, path, bench)
    assert {r["node_id"]: r["result"] for r in reports} == {"n-00": "skipped", "n-01": "skipped",
                                                            "n-02": "provisioned"}
    assert not Pending.dir_for(fleet, "n-01").exists()  # no copy of its secrets left behind
    assert certs_per_node(fleet) == {"n-00": 1, "n-01": 1, "n-02": 1}
