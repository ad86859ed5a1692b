"""fieldnode.bringup with the flash and deploy steps stood in for: what is checked before any board is
touched, the order of the steps, and where a stopped run says it stopped."""
import shutil
from types import SimpleNamespace

import pytest

from fieldnode import audit, bringup as bringup_mod, ca
from fieldnode.bench.esp_image import build_image
from fieldnode.errors import FieldnodeError
from fieldnode.fleet import Fleet
from fieldnode.provision import AlreadyProvisioned, Settings, provision, revoke
from provision_fakes import FakeBench

PORT = "/dev/ttyV0"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template") / "fleet"
    ca.init(Fleet(root), broker=("127.0.0.1", 8883))
    return root


@pytest.fixture
def env(template, tmp_path, monkeypatch):
    shutil.copytree(template, tmp_path / "fleet")
    fleet = Fleet(tmp_path / "fleet")
    bench = FakeBench()
    bench.add(PORT)
    monkeypatch.setattr("fieldnode.provision._default_open_board", bench.open)
    calls = []

    def flash_node(root, port, firmware, **kw):
        calls.append(("flash", port))
        return SimpleNamespace(mac="24:0a:c4:00:00:01", sha256="ab" * 32, as_dict=lambda: {"mac": "24:0a:c4:00:00:01"})

    def deploy(port, board_name=None, **kw):
        calls.append(("deploy", port))
        if getattr(deploy, "fail", False):
            raise FieldnodeError("the board lacks umqtt.simple: run `make setup`")
        return SimpleNamespace(app_sha256="cd" * 32, as_dict=lambda: {"app_sha256": "cd" * 32})

    monkeypatch.setattr("fieldnode.flash.flash_node", flash_node)
    monkeypatch.setattr("fieldnode.deploy.deploy", deploy)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(build_image("esp32", 16 * 1024))
    return SimpleNamespace(fleet=fleet, bench=bench, calls=calls, fw=fw, deploy=deploy)


def run(env, node="node-1", **kw):
    kw.setdefault("settings", Settings(board="unix", bench_i2c="127.0.0.1:7000"))
    return bringup_mod.bringup(env.fleet, node, "socket://127.0.0.1:1", env.fw, repl_port=PORT,
                               open_board=env.bench.open, **kw)


def test_flash_then_deploy_then_provision(env):
    res = run(env)
    assert env.calls == [("flash", "socket://127.0.0.1:1"), ("deploy", PORT)]
    assert res["provision"]["result"] == "provisioned" and res["deploy"]["app_sha256"] == "cd" * 32
    rec = audit.read(env.fleet.root)[-1]
    assert (rec["action"], rec["node"], rec["result"]) == ("bringup", "node-1", "ok")
    assert rec["sha256"] == {"firmware": "ab" * 32, "app": "cd" * 32, "config": res["provision"]["config_sha256"]}


@pytest.mark.parametrize("case, message", [
    ("provisioned", "node-1 is already provisioned: nothing was flashed"),
    ("revoked", "node-1 was revoked on .*bring the board up under a new node id"),
    ("firmware", "firmware .*missing.bin not found: check the path"),
    ("settings", "invalid node config: .*low must be below"),
    ("node id", "invalid node id"),
])
def test_checked_before_any_board_is_touched(env, case, message):
    kw = {}
    node = "node-1"
    if case in ("provisioned", "revoked"):
        provision(env.fleet, "node-1", PORT, Settings(bench_i2c="127.0.0.1:7000"), open_board=env.bench.open)
        if case == "revoked":
            revoke(env.fleet, "node-1")
        env.bench.boards[PORT].writes.clear()
    if case == "firmware":
        env.fw = env.fw.with_name("missing.bin")
    if case == "settings":
        kw["settings"] = Settings(board="unix", thresholds={"temperature_c": {"low": 9, "high": 1}})
    if case == "node id":
        node = "no good"
    with pytest.raises(FieldnodeError, match=message):
        run(env, node, **kw)
    assert env.calls == [] and env.bench.boards[PORT].writes == []


def test_a_stopped_run_names_its_step_and_resumes(env):
    env.deploy.fail = True
    with pytest.raises(FieldnodeError, match=r"^bringup stopped at deploy: the board lacks umqtt.simple"):
        run(env)
    rec = audit.read(env.fleet.root)[-1]
    assert rec["action"] == "bringup" and rec["result"].startswith("failed: bringup stopped at deploy")
    assert rec["details"]["stopped_at"] == "deploy"
    env.deploy.fail = False
    res = run(env, skip_flash=True)
    assert env.calls[-1] == ("deploy", PORT) and env.calls.count(("flash", "socket://127.0.0.1:1")) == 1
    assert res["flash"] is None and res["provision"]["result"] == "provisioned"
    with pytest.raises(AlreadyProvisioned):
        run(env)
