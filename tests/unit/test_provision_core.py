"""fieldnode.provision against a fake board: what lands on the board, in the inventory and in the audit
trail; refusals that change nothing; resuming after a failure or a kill without a second certificate."""
import datetime
import json
import os
import signal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_private_key
from cryptography.x509.oid import NameOID

from fieldnode import audit, ca, nodeconfig, pki
from fieldnode.errors import FieldnodeError, UsageError
from fieldnode.fleet import Fleet, KeyRing, utcnow
from fieldnode.inventory import Inventory
from fieldnode.provision import (AlreadyProvisioned, Pending, ProvisionError, RevokedNode, Settings, provision,
                                 revoke, rotate)
from provision_fakes import FakeBench

PORT = "/dev/ttyV0"
BENCH = Settings(bench_i2c="127.0.0.1:7000")
ESP32 = dict(platform="esp32", machine="Generic ESP32 module with ESP32", mac="24:0A:C4:12:34:56")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One CA for the module (key generation is the slow part); each test gets a copy of the fleet."""
    root = tmp_path_factory.mktemp("template") / "fleet"
    ca.init(Fleet(root), broker=("127.0.0.1", 8883))
    return root


@pytest.fixture
def fleet(template, tmp_path):
    import shutil

    shutil.copytree(template, tmp_path / "fleet")
    return Fleet(tmp_path / "fleet")


@pytest.fixture
def bench():
    b = FakeBench()
    b.add(PORT)
    return b


def node_certs(fleet, node_id):
    with Inventory(fleet.inventory_db) as inv:
        rows = inv.certificates(subject=node_id, kind="node")
    files = [p for p in fleet.issued_dir.glob("*.pem") if _cn(pki.load_cert(p)) == node_id]
    return rows, files


def _cn(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def snapshot(fleet, bench):
    """Everything a refused command must leave alone."""
    with Inventory(fleet.inventory_db) as inv:
        state = (inv.nodes(), inv.certificates())
    files = sorted(str(p.relative_to(fleet.root)) for p in fleet.root.rglob("*")
                   if p.is_file() and p.name not in ("audit.log", "audit.head") and not p.name.endswith(".lock"))
    return state, files, {port: dict(b.fs) for port, b in bench.boards.items()}


def test_provision_writes_a_working_identity_and_records_it(fleet, bench):
    res = provision(fleet, "node-1", PORT, BENCH, open_board=bench.open, operator="alice")
    fs = bench.boards[PORT].fs
    cfg = json.loads(fs["config.json"])
    nodeconfig.validate(cfg)  # the firmware's own parser accepts it
    assert cfg["node_id"] == "node-1" and cfg["key_id"] == res["key_id"] == 1
    assert cfg["bench"] == {"i2c": "127.0.0.1:7000", "bus": "node-1"}
    assert cfg["broker"]["host"] == "127.0.0.1" and cfg["broker"]["server_name"] == "localhost"
    files = cfg["files"]
    assert set(fs) == {"config.json", files["ca"], files["cert"], files["key"], files["payload_key"]}
    cert = x509.load_der_x509_certificate(fs[files["cert"]])
    key = load_der_private_key(fs[files["key"]], None)
    assert _cn(cert) == "node-1"
    assert key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == \
        cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert fs[files["ca"]] == pki.load_cert(fleet.ca_cert).public_bytes(Encoding.DER)
    assert KeyRing(fleet).get("node-1") == {1: fs[files["payload_key"]]}
    assert len(fs[files["payload_key"]]) == 32
    assert bench.boards[PORT].writes[-1] == "config.json"  # the switch is written last
    assert bench.boards[PORT].resets == 1

    with Inventory(fleet.inventory_db) as inv:
        node = inv.get("node-1")
    assert node["status"] == "provisioned" and node["board"] == "unix" and node["operator"] == "alice"
    assert node["cert_serial"] == "%x" % cert.serial_number == res["cert_serial"]
    assert node["cert_fingerprint"] == pki.fingerprint(cert)
    assert node["files"]["config.json"] == res["config_sha256"]
    not_after = datetime.datetime.fromisoformat(node["cert_not_after"])
    assert datetime.timedelta(days=700) < not_after - utcnow() < datetime.timedelta(days=900)
    rows, issued = node_certs(fleet, "node-1")
    assert len(rows) == 1 and rows[0]["status"] == "active" and len(issued) == 1
    assert not Pending.dir_for(fleet, "node-1").exists()

    rec = audit.read(fleet.root, node="node-1")[-1]
    assert rec["action"] == "provision" and rec["result"] == "ok" and rec["operator"] == "alice"
    assert rec["sha256"]["config"] == res["config_sha256"]
    assert audit.verify(fleet.root) >= 1


def test_esp32_board_is_detected_and_its_mac_recorded(fleet, bench):
    bench.add("/dev/ttyUSB0", **ESP32)
    s = Settings(wifi_ssid="plant", wifi_psk="correct horse battery")
    res = provision(fleet, "cold-1", "/dev/ttyUSB0", s, open_board=bench.open)
    assert res["board"] == "esp32-devkitc" and res["mac"] == "24:0a:c4:12:34:56"
    cfg = json.loads(bench.boards["/dev/ttyUSB0"].fs["config.json"])
    assert cfg["wifi"] == {"ssid": "plant", "psk": "correct horse battery"} and "bench" not in cfg
    assert audit.read(fleet.root, node="cold-1")[-1]["mac"] == "24:0a:c4:12:34:56"


@pytest.mark.parametrize("port_kw, settings, message", [
    (ESP32, Settings(board="esp32-devkitc"), "needs Wi-Fi: pass --wifi-ssid"),
    (ESP32, Settings(board="esp32-s3-devkitc-1", wifi_ssid="x", wifi_psk="12345678"), "is an esp32: pass the matching"),
    ({}, Settings(board="esp32-devkitc"), "runs MicroPython for 'linux': check --port and --board"),
    ({}, Settings(), "unix board reads its sensor over the bench bus and this board does not say where it is: pass --bench-i2c HOST:PORT"),
    ({}, Settings(bench_i2c="127.0.0.1:1", thresholds={"temperature_c": {"low": 9, "high": 2}}),
     "invalid node config: .*low must be below"),
    ({}, Settings(bench_i2c="127.0.0.1:1", interval_s=-1), "interval_s must be a number 0.05-86400"),
    (dict(platform="esp32", machine="Weird board with ESP32S3"), Settings(), "ESP32 node needs Wi-Fi"),
    (dict(platform="rp2", machine="Raspberry Pi Pico with RP2040"), Settings(), "cannot tell which board is on /dev/ttyX .*pass --board"),
])
def test_bad_input_is_one_line_and_changes_nothing(fleet, bench, port_kw, settings, message):
    port = "/dev/ttyX"
    bench.add(port, **port_kw)
    before = snapshot(fleet, bench)
    with pytest.raises(FieldnodeError) as err:
        provision(fleet, "node-1", port, settings, open_board=bench.open)
    text = str(err.value)
    assert "\n" not in text
    if message:
        import re
        assert re.search(message, text), text
    assert snapshot(fleet, bench) == before
    assert audit.read(fleet.root)[-1]["result"].startswith("failed: ")


def test_no_ca_yet_says_run_ca_init(tmp_path, bench):
    with pytest.raises(FieldnodeError, match=r"no fleet CA in .*: run `fieldnode ca init` first"):
        provision(Fleet(tmp_path / "nothing"), "node-1", PORT, BENCH, open_board=bench.open)
    assert not (tmp_path / "nothing").exists()


def test_bad_node_id_is_a_usage_error(fleet, bench):
    with pytest.raises(UsageError, match="invalid node id 'node 1': use 1-32 of A-Z a-z 0-9 _ -"):
        provision(fleet, "node 1", PORT, BENCH, open_board=bench.open)


def test_unplugged_port_is_reported_and_nothing_is_issued(fleet, bench):
    with pytest.raises(FieldnodeError, match="no such port"):
        provision(fleet, "node-1", "/dev/ttyNONE", BENCH, open_board=bench.open)
    assert node_certs(fleet, "node-1") == ([], [])


def test_already_provisioned_points_to_rotate_and_changes_nothing(fleet, bench):
    provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    before = snapshot(fleet, bench)
    with pytest.raises(AlreadyProvisioned, match=r"node-1 is already provisioned .*use `fieldnode rotate node-1"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    assert snapshot(fleet, bench) == before
    assert audit.read(fleet.root, node="node-1")[-1]["result"].startswith("failed: node-1 is already provisioned")


def test_a_failed_board_write_resumes_with_the_same_certificate(fleet, bench):
    board = bench.boards[PORT]
    board.fail_on_write = "payload.k1.key"
    with pytest.raises(FieldnodeError, match="check the cable"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    rows, issued = node_certs(fleet, "node-1")
    assert [r["status"] for r in rows] == ["pending"] and len(issued) == 1
    assert "config.json" not in board.fs  # never a config naming files that are not there
    with Inventory(fleet.inventory_db) as inv:
        assert inv.get("node-1")["status"] == "pending"
    board.fail_on_write = None
    res = provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    assert res["resumed"] and res["cert_serial"] == rows[0]["serial"]
    assert "ca.der" not in res["written"]  # what was already right is not written again
    rows2, issued2 = node_certs(fleet, "node-1")
    assert [r["status"] for r in rows2] == ["active"] and len(issued2) == 1


def test_a_write_that_does_not_read_back_is_caught(fleet, bench):
    bench.boards[PORT].corrupt_on_write = "node.k1.der"
    with pytest.raises(ProvisionError, match=r"node\.k1\.der on the board at .* does not read back as written"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    bench.boards[PORT].corrupt_on_write = None
    assert provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)["resumed"]
    assert len(node_certs(fleet, "node-1")[0]) == 1


def _run_killed(fn):
    """Run fn in a forked child that SIGKILLs itself where fn says; return the child's wait status."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("kill_after", [1, 2], ids=["old-pair-moved-away", "new-pair-in-place"])
def test_a_host_cert_renewal_killed_between_its_renames_is_finished_by_the_next(tmp_path, monkeypatch, kill_after):
    fleet = Fleet(tmp_path / "fleet")
    ca.init(fleet)
    renames = []
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        renames.append(dst)
        if len(renames) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def child():
        monkeypatch.setattr(ca.os, "rename", rename)
        ca.renew_host_cert(fleet)

    assert os.WIFSIGNALED(_run_killed(child))
    assert fleet.host_cert.exists() == (kill_after == 2)  # after the first rename the pair is put aside
    if kill_after == 1:
        with pytest.raises(FieldnodeError, match="interrupted; run it again"):
            fleet.require(fleet.host_cert)
    ca.renew_host_cert(fleet)
    cert, key = pki.load_cert(fleet.host_cert), pki.load_key(fleet.host_key)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert fleet.host_key.stat().st_mode & 0o777 == 0o600
    assert not list(fleet.root.glob(".host*"))


@pytest.mark.parametrize("kill_at", ["node.k1.der", "config.json"])
def test_killed_between_issue_and_board_resumes_without_a_second_certificate(fleet, bench, kill_at):
    board = bench.boards[PORT]

    def child():
        board.on_write = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == kill_at else None
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)

    status = _run_killed(child)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    rows, issued = node_certs(fleet, "node-1")
    assert len(rows) == 1 and len(issued) == 1 and Pending.dir_for(fleet, "node-1").exists()
    res = provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)  # (the fork's board writes are lost)
    assert res["resumed"] and res["cert_serial"] == rows[0]["serial"]
    assert len(node_certs(fleet, "node-1")[0]) == 1


def test_killed_after_commit_is_finished_by_the_next_run(fleet, bench, monkeypatch):
    def child():
        monkeypatch.setattr(Pending, "remove", lambda self: os.kill(os.getpid(), signal.SIGKILL))
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)

    assert os.WIFSIGNALED(_run_killed(child))
    assert Pending.dir_for(fleet, "node-1").exists()
    with pytest.raises(AlreadyProvisioned):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    assert not Pending.dir_for(fleet, "node-1").exists()  # the secrets' copy is gone
    assert len(node_certs(fleet, "node-1")[0]) == 1


def test_a_second_process_on_the_same_node_is_refused(fleet, bench):
    from fieldnode.provision import node_lock

    with node_lock(fleet, "node-1"):
        with pytest.raises(ProvisionError, match="another fieldnode command is working on node-1"):
            provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)


def test_a_board_that_is_another_live_node_is_refused(fleet, bench):
    bench.add("/dev/ttyUSB0", **ESP32)
    wifi = Settings(wifi_ssid="plant", wifi_psk="12345678")
    provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    provision(fleet, "node-2", "/dev/ttyUSB0", wifi, open_board=bench.open)
    with pytest.raises(ProvisionError, match=r"the board on /dev/ttyV0 is already node-1 .*revoke node-1 first"):
        provision(fleet, "node-3", PORT, BENCH, open_board=bench.open)
    bench.boards["/dev/ttyUSB0"].fs.clear()  # wiped, but the MAC is the same board
    with pytest.raises(ProvisionError, match=r"\(MAC 24:0a:c4:12:34:56\) is already node-2"):
        provision(fleet, "node-4", "/dev/ttyUSB0", wifi, open_board=bench.open)
    assert node_certs(fleet, "node-3") == ([], []) and node_certs(fleet, "node-4") == ([], [])
    revoke(fleet, "node-1")
    provision(fleet, "node-3", PORT, BENCH, open_board=bench.open)  # a revoked node's board can be reused


def test_rotation_keeps_the_config_and_accepts_both_keys_for_the_overlap(fleet, bench):
    board = bench.boards[PORT]
    s = Settings(bench_i2c="127.0.0.1:7000", interval_s=3, thresholds={"temperature_c": {"low": 2, "high": 8}})
    first = provision(fleet, "node-1", PORT, s, open_board=bench.open)
    board.fs["counters.dat"] = b"v1 4 96\n"
    old_key = board.fs["payload.k1.key"]
    res = rotate(fleet, "node-1", PORT, open_board=bench.open, overlap_days=3)
    cfg = json.loads(board.fs["config.json"])
    assert res["result"] == "rotated" and res["key_id"] == cfg["key_id"] == 2 and res["previous_key_id"] == 1
    assert cfg["interval_s"] == 3 and cfg["thresholds"]["temperature_c"]["high"] == 8  # settings kept
    assert board.fs["counters.dat"] == b"v1 4 96\n"  # sequence numbers continue
    assert not any(n.startswith(("node.k1", "payload.k1")) for n in board.fs)  # old secrets gone
    assert res["cert_serial"] != first["cert_serial"]
    keys = KeyRing(fleet).get("node-1")
    assert keys == {1: old_key, 2: board.fs["payload.k2.key"]}
    until = datetime.datetime.fromisoformat(res["previous_key_accepted_until"])
    assert datetime.timedelta(days=2, hours=23) < until - utcnow() <= datetime.timedelta(days=3)
    with Inventory(fleet.inventory_db) as inv:
        assert inv.get("node-1")["status"] == "rotated"
        assert inv.certificate(first["cert_serial"])["status"] == "superseded"
        assert inv.crl_serials() == []
        assert inv.crl_serials(until + datetime.timedelta(seconds=1)) == [int(first["cert_serial"], 16)]
    assert audit.read(fleet.root, node="node-1")[-1]["action"] == "rotate"


def test_rotation_with_revoke_old_publishes_the_crl(fleet, bench):
    first = provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    rotate(fleet, "node-1", PORT, open_board=bench.open, revoke_old=True)
    crl = pki.load_crl(fleet.crl)
    assert crl.get_revoked_certificate_by_serial_number(int(first["cert_serial"], 16)) is not None
    assert set(KeyRing(fleet).get("node-1")) == {2}


def test_rotating_the_wrong_board_or_an_unknown_node_is_refused(fleet, bench):
    bench.add("/dev/ttyV1")
    provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    provision(fleet, "node-2", "/dev/ttyV1", BENCH, open_board=bench.open)
    before = snapshot(fleet, bench)
    with pytest.raises(ProvisionError, match="the board on /dev/ttyV1 is node-2, not node-1: check --port"):
        rotate(fleet, "node-1", "/dev/ttyV1", open_board=bench.open)
    with pytest.raises(ProvisionError, match="node-9 is not provisioned yet: use `fieldnode provision"):
        rotate(fleet, "node-9", PORT, open_board=bench.open)
    assert snapshot(fleet, bench) == before


def test_provision_with_rotate_flag_rotates_with_new_settings(fleet, bench):
    provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    res = provision(fleet, "node-1", PORT, Settings(bench_i2c="127.0.0.1:7001", interval_s=5), rotate=True,
                    open_board=bench.open)
    cfg = json.loads(bench.boards[PORT].fs["config.json"])
    assert res["result"] == "rotated" and cfg["interval_s"] == 5 and cfg["bench"]["i2c"] == "127.0.0.1:7001"


def test_revoke_puts_every_certificate_on_the_crl_and_stops_the_keys(fleet, bench):
    first = provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    second = rotate(fleet, "node-1", PORT, open_board=bench.open)
    res = revoke(fleet, "node-1", operator="bob", reason="board lost")
    crl = pki.load_crl(fleet.crl)
    ca_cert = pki.load_cert(fleet.ca_cert)
    assert crl.is_signature_valid(ca_cert.public_key())
    for r in (first, second):
        assert crl.get_revoked_certificate_by_serial_number(int(r["cert_serial"], 16)) is not None
    assert KeyRing(fleet).get("node-1") is None
    assert set(fleet.payload_keys(include_inactive=True)["node-1"]) == {1, 2}
    rec = audit.read(fleet.root, node="node-1")[-1]
    assert rec["action"] == "revoke" and rec["operator"] == "bob" and rec["details"]["reason"] == "board lost"
    number = res["crl_number"]
    again = revoke(fleet, "node-1")
    assert again["already"] and again["crl_number"] > number
    with pytest.raises(RevokedNode, match="node-1 was revoked on .*: node ids are never reused"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open, rotate=True)
    with pytest.raises(ProvisionError, match="unknown node 'ghost'"):
        revoke(fleet, "ghost")


def test_passphrase_protected_ca(tmp_path, bench, monkeypatch):
    fleet = Fleet(tmp_path / "fleet")
    ca.init(fleet, passphrase=b"s3cret passphrase", broker=("127.0.0.1", 8883))
    assert b"ENCRYPTED" in fleet.ca_key.read_bytes()
    monkeypatch.delenv(ca.PASSPHRASE_ENV, raising=False)
    with pytest.raises(FieldnodeError, match=r"passphrase-protected: set \$FIELDNODE_CA_PASSPHRASE or pass "
                                             r"--passphrase-file"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    assert node_certs(fleet, "node-1") == ([], [])
    with pytest.raises(FieldnodeError, match="passphrase is wrong"):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open, passphrase=b"nope")
    assert provision(fleet, "node-1", PORT, BENCH, open_board=bench.open, passphrase=b"s3cret passphrase")


def test_ca_init_refuses_to_overwrite(fleet):
    before = fleet.ca_key.read_bytes()
    with pytest.raises(FieldnodeError, match="a fleet CA already exists in .*refusing to overwrite"):
        ca.init(fleet)
    assert fleet.ca_key.read_bytes() == before


def test_ca_init_makes_the_three_certificates_and_records_them(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    res = ca.init(fleet, server_names=["mqtt.plant"], server_ips=["10.0.0.5"], broker=("mqtt.plant", 8883))
    ca_cert = pki.load_cert(fleet.ca_cert)
    host, server = pki.load_cert(fleet.host_cert), pki.load_cert(fleet.server_cert)
    assert _cn(host) == "fieldnode-host" and res["ca_fingerprint"] == pki.fingerprint(ca_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.plant"]
    server.verify_directly_issued_by(ca_cert)
    host.verify_directly_issued_by(host)  # self-signed: the broker's host listener pins it
    assert pki.is_self_signed(host) and ca.host_cert_problem(fleet) is None
    assert fleet.broker() == ("mqtt.plant", 8883)
    for p in (fleet.ca_key, fleet.host_key, fleet.server_key):
        assert p.stat().st_mode & 0o777 == 0o600
    with Inventory(fleet.inventory_db) as inv:
        assert sorted(c["kind"] for c in inv.certificates()) == ["host", "server"]
    assert len(list(fleet.issued_dir.glob("*.pem"))) == 1  # the server's: the host's is not the CA's
    assert pki.load_crl(fleet.crl).is_signature_valid(ca_cert.public_key())
    assert not list(fleet.root.glob(".ca-init-*"))


def test_killed_while_removing_the_pending_copy_leaves_no_half_directory(fleet, bench, monkeypatch):
    import fieldnode.provision as provision_mod

    def child():
        monkeypatch.setattr(provision_mod.shutil, "rmtree", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)

    assert os.WIFSIGNALED(_run_killed(child))
    assert not Pending.dir_for(fleet, "node-1").exists()  # gone in one rename
    leftovers = list(fleet.pending_dir.glob(".node-1.*"))
    assert leftovers  # the renamed copy, still holding key material ...
    with pytest.raises(AlreadyProvisioned):
        provision(fleet, "node-1", PORT, BENCH, open_board=bench.open)
    assert not list(fleet.pending_dir.glob(".node-1.*"))  # ... deleted by the next command on the node
