"""The technician commands end to end through the CLI (fieldnode.cli.main), boards faked: output, exit
codes, one-line errors, the audit trail, broker-config's files — and no secret in any output or log."""
import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from fieldnode import ca as ca_mod, cli, pki, provision as provision_mod
from fieldnode.fleet import Fleet
from fieldnode.inventory import Inventory
from provision_fakes import FakeBench

PSK = "wifi-passphrase-do-not-print"
PASSPHRASE = "ca-passphrase-do-not-print"


@pytest.fixture
def env(tmp_path, monkeypatch):
    bench = FakeBench()
    bench.add("/dev/ttyV0")
    bench.add("/dev/ttyV1")
    bench.add("/dev/ttyUSB0", platform="esp32", machine="Generic ESP32 module with ESP32", mac="240ac4123456")
    monkeypatch.setattr(provision_mod, "_default_open_board", bench.open)
    monkeypatch.setenv("FIELDNODE_FLEET", str(tmp_path / "fleet"))
    monkeypatch.delenv("FIELDNODE_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("FIELDNODE_WIFI_PSK", raising=False)
    return bench, Fleet(tmp_path / "fleet"), tmp_path


class Run:
    def __init__(self, capsys):
        self.capsys = capsys
        self.seen = []

    def __call__(self, *argv, code=0):
        try:
            rc = cli.main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        out, err = self.capsys.readouterr()
        self.seen.append(out + err)
        assert rc == code, (argv, rc, out, err)
        return out, err


@pytest.fixture
def run(capsys):
    return Run(capsys)


def test_no_ca_yet(env, run):
    _, err = run("provision", "node-1", "--port", "/dev/ttyV0", "--bench-i2c", "h:1", code=1)
    assert err.strip().startswith("fieldnode: no fleet CA in ") and err.strip().endswith(
        "run `fieldnode ca init` first (or point --fleet / $FIELDNODE_FLEET at the fleet directory)")
    assert len(err.strip().splitlines()) == 1
    for cmd in (["inventory", "list"], ["audit", "verify"], ["revoke", "x"], ["broker-config", "--out", "d"]):
        _, err = run(*cmd, code=1)
        assert "run `fieldnode ca init` first" in err


def test_ca_init_once(env, run):
    bench, fleet, tmp = env
    out, _ = run("ca", "init", "--broker", "127.0.0.1:8883", "--operator", "alice")
    assert "fleet CA created" in out
    _, err = run("ca", "init", code=1)
    assert "a fleet CA already exists" in err and "refusing to overwrite" in err
    recs = [json.loads(l) for l in (fleet.root / "audit.log").read_text().splitlines()]
    assert [(r["action"], r["result"][:6], r["operator"]) for r in recs] == [
        ("ca init", "ok", "alice"), ("ca init", "failed", recs[1]["operator"])]


def test_usage_errors_exit_2(env, run):
    run("ca", "init")
    _, err = run("provision", "no/such", "--port", "/dev/ttyV0", code=2)
    assert "invalid node id 'no/such'" in err
    _, err = run("provision", "node-1", code=2)
    assert "give NODE_ID and --port PORT (or --batch CSV)" in err
    _, err = run("provision", "node-1", "--port", "/dev/ttyV0", "--broker", "nope", code=2)
    assert "--broker: expected HOST:PORT" in err
    _, err = run("provision", "node-1", "--port", "/dev/ttyV0", "--board", "esp99", code=2)
    assert "--board: unknown board 'esp99': use one of" in err
    _, err = run("provision", "node-1", "--port", "/dev/ttyV0", "--overlap-days", "3", code=2)
    assert "go with --rotate" in err


def test_provision_json_inventory_and_rotate_hint(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    out, _ = run("provision", "node-1", "--port", "/dev/ttyV0", "--bench-i2c", "127.0.0.1:7000", "--json")
    res = json.loads(out)
    assert res["result"] == "provisioned" and res["node_id"] == "node-1" and res["key_id"] == 1
    assert set(res) >= {"cert_serial", "cert_fingerprint", "cert_not_after", "config_sha256", "files", "mac"}
    _, err = run("provision", "node-1", "--port", "/dev/ttyV0", "--bench-i2c", "127.0.0.1:7000", code=1)
    assert "use `fieldnode rotate node-1 --port /dev/ttyV0`" in err
    out, _ = run("inventory", "list", "--json")
    (node,) = json.loads(out)
    assert node["node_id"] == "node-1" and node["status"] == "provisioned" and node["cert_serial"] == res["cert_serial"]
    out, _ = run("inventory", "list")
    assert out.splitlines()[0].split()[:3] == ["NODE", "STATUS", "BOARD"] and "node-1" in out
    out, _ = run("rotate", "node-1", "--port", "/dev/ttyV0", "--overlap-days", "2")
    assert "rotated keys of node-1" in out and "(id 1 accepted until" in out
    out, _ = run("inventory", "show", "node-1", "--json")
    shown = json.loads(out)
    assert [c["status"] for c in shown["certificates"]] == ["superseded", "active"]
    assert [(k["key_id"], k["accepted"]) for k in shown["payload_keys"]] == [(1, True), (2, True)]
    assert "key" not in json.dumps(shown["payload_keys"]).replace('"key_id"', "")
    out, _ = run("inventory", "show", "node-1")
    assert "superseded" in out and "id 2" in out
    _, err = run("inventory", "show", "ghost", code=1)
    assert "unknown node 'ghost'" in err


def test_batch_cli_json_lines_and_exit_code(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    csv = tmp / "nodes.csv"
    csv.write_text("node_id,port,board\nb-1,/dev/ttyV0,unix\nb-2,/dev/ttyV1,unix\nb-3,/dev/ttyV9,unix\n")
    out, err = run("provision", "--batch", str(csv), "--bench-i2c", "127.0.0.1:7000", "--json", code=1)
    lines = [json.loads(l) for l in out.splitlines()]
    assert [l["type"] for l in lines] == ["row", "row", "row", "summary"]
    assert {l["node_id"]: l["result"] for l in lines[:3]} == {"b-1": "provisioned", "b-2": "provisioned",
                                                               "b-3": "failed"}
    assert "no such port" in lines[2]["error"]
    assert lines[3] == dict(lines[3], rows=3, provisioned=2, failed=1, skipped=0, ok=False)
    bench.add("/dev/ttyV9")
    out, _ = run("provision", "--batch", str(csv), "--bench-i2c", "127.0.0.1:7000")
    assert "row 2 b-1 on /dev/ttyV0: skipped (already provisioned)" in out
    assert "3 rows: 1 provisioned, 0 rotated, 2 skipped, 0 failed" in out


def test_audit_verify_then_tamper(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    run("provision", "node-1", "--port", "/dev/ttyV0", "--bench-i2c", "127.0.0.1:7000", "--operator", "alice")
    run("provision", "node-2", "--port", "/dev/ttyV1", "--bench-i2c", "127.0.0.1:7000")
    out, _ = run("audit", "verify", "--json")
    assert json.loads(out)["ok"] and json.loads(out)["records"] == 3
    out, _ = run("audit", "show", "--node", "node-1", "--json")
    (rec,) = json.loads(out)
    assert rec["operator"] == "alice" and rec["action"] == "provision" and rec["sha256"]["config"]
    out, _ = run("audit", "show")
    assert len(out.splitlines()) == 4 and "provision" in out
    log = fleet.root / "audit.log"
    lines = log.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["operator"] = "mallory"
    lines[1] = json.dumps(rec, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    _, err = run("audit", "verify", code=1)
    assert err.strip() == "fieldnode: audit record 2: its hash does not match its content (edited)"


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_broker_config_files(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    for i in (0, 1):
        run("provision", "node-%d" % i, "--port", "/dev/ttyV%d" % i, "--bench-i2c", "127.0.0.1:7000")
    out_dir = tmp / "broker"
    out, _ = run("broker-config", "--out", str(out_dir), "--port", "18883", "--bind", "127.0.0.1", "--json")
    res = json.loads(out)
    assert res["nodes"] == ["node-0", "node-1"]
    conf = (out_dir / "mosquitto.conf").read_text()
    for line in ("listener 18883 127.0.0.1", "require_certificate true", "use_identity_as_username true",
                 "crlfile %s" % (out_dir / "crl.pem"), "allow_anonymous false", "acl_file %s" % (out_dir / "acl")):
        assert line in conf.splitlines()
    acl = (out_dir / "acl").read_text()
    assert "user node-0\ntopic write fieldnode/node-0/#" in acl and "user fieldnode-host\ntopic read fieldnode/#" in acl
    assert _mode(out_dir / "server.key") == 0o600 and _mode(out_dir) == 0o700
    assert (out_dir / "server.key").read_bytes() == fleet.server_key.read_bytes()
    run("revoke", "node-0", "--reason", "test")
    run("broker-config", "--out", str(out_dir), "--port", "18883", "--bind", "127.0.0.1")
    acl = (out_dir / "acl").read_text()
    assert "node-0" not in acl and "user node-1" in acl
    crl = pki.load_crl(out_dir / "crl.pem")
    serial = int(json.loads(run("inventory", "show", "node-0", "--json")[0])["cert_serial"], 16)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    actions = [json.loads(l)["action"] for l in (fleet.root / "audit.log").read_text().splitlines()]
    assert actions.count("broker-config") == 2 and "revoke" in actions


def test_broker_config_gives_the_host_tools_a_listener_that_pins_the_host_certificate(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    out_dir = tmp / "broker"
    res = json.loads(run("broker-config", "--out", str(out_dir), "--port", "18883", "--host-port", "18884",
                         "--json")[0])
    assert (res["port"], res["host_port"]) == (18883, 18884)
    assert (out_dir / "host.pem").read_bytes() == fleet.host_cert.read_bytes()
    assert "cafile %s\n" % (out_dir / "host.pem") in (out_dir / "mosquitto.conf").read_text()
    assert fleet.host_broker() == ("127.0.0.1", 18884) and fleet.broker() == ("127.0.0.1", 8883)
    _, err = run("broker-config", "--out", str(out_dir), "--port", "18883", "--host-port", "18883", code=2)
    assert "two different ports" in err and err.count("\n") == 1


def test_host_tools_without_a_host_listener_say_how_to_get_one(env, run):
    run("ca", "init", "--broker", "127.0.0.1:8883")
    for cmd in (["monitor"], ["ingest"]):
        _, err = run(*cmd, code=1)
        assert "no host listener recorded" in err and "fieldnode broker-config" in err and err.count("\n") == 1


def test_ca_host_cert_replaces_the_host_certificate_and_broker_config_refuses_a_ca_issued_one(env, run):
    bench, fleet, tmp = env
    run("ca", "init", "--broker", "127.0.0.1:8883")
    old = fleet.host_cert.read_bytes()
    # a fleet made before the host listener: its host certificate signed by the fleet CA
    ca_key = pki.load_key(fleet.ca_key)
    key = pki.new_key()
    cert = pki._leaf_builder(pki.load_cert(fleet.ca_cert), pki.HOST_CN, key, 825,
                             ExtendedKeyUsageOID.CLIENT_AUTH).sign(ca_key, hashes.SHA256())
    pki.write_cert(fleet.host_cert, cert)
    pki.write_key(fleet.host_key, key)
    with Inventory(fleet.inventory_db) as inv:  # as `ca init` recorded it then
        inv.add_certificate(ca_mod.cert_info(cert, pki.HOST_CN, "host"), "active")
    _, err = run("broker-config", "--out", str(tmp / "broker"), code=1)
    assert "fieldnode ca host-cert" in err and err.count("\n") == 1
    assert not (tmp / "broker").exists()
    res = json.loads(run("ca", "host-cert", "--json")[0])
    new = pki.load_cert(fleet.host_cert)
    assert pki.is_self_signed(new) and fleet.host_cert.read_bytes() != old
    assert res["host_fingerprint"] == pki.fingerprint(new)
    assert _mode(fleet.host_key) == 0o600 and not list(fleet.root.glob(".host*"))
    assert pki.load_key(fleet.host_key).public_key().public_numbers() == new.public_key().public_numbers()
    run("broker-config", "--out", str(tmp / "broker"))
    with Inventory(fleet.inventory_db) as inv:
        hosts = inv.certificates(kind="host")
    assert [h["status"] for h in hosts] == ["revoked", "revoked", "active"]
    assert hosts[-1]["fingerprint"] == res["host_fingerprint"]
    # the CA-issued one is on the CRL the listeners load: the nodes' listener refuses it from now on
    crl = pki.load_crl(tmp / "broker" / "crl.pem")
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    actions = [json.loads(l)["action"] for l in (fleet.root / "audit.log").read_text().splitlines()]
    assert "ca host-cert" in actions


def _secret_forms(data):
    return {data.hex(), data.hex().upper(), base64.b64encode(data).decode()}


def test_secrets_are_never_printed_or_logged_and_key_files_are_0600(env, run):
    bench, fleet, tmp = env
    (tmp / "pass.txt").write_text(PASSPHRASE + "\n")
    (tmp / "psk.txt").write_text(PSK + "\n")
    run("ca", "init", "--passphrase-file", str(tmp / "pass.txt"), "--broker", "127.0.0.1:8883")
    pp = ["--passphrase-file", str(tmp / "pass.txt")]
    run("provision", "node-1", "--port", "/dev/ttyV0", "--bench-i2c", "127.0.0.1:7000", *pp)
    run("provision", "cold-1", "--port", "/dev/ttyUSB0", "--wifi-ssid", "plant", "--wifi-psk-file",
        str(tmp / "psk.txt"), "--json", *pp)
    bench.boards["/dev/ttyV1"].fail_on_write = "config.json"
    run("provision", "node-2", "--port", "/dev/ttyV1", "--bench-i2c", "127.0.0.1:7000", *pp, code=1)  # pending
    run("rotate", "node-1", "--port", "/dev/ttyV0", "--json", *pp)
    run("revoke", "node-1", "--json", *pp)
    run("broker-config", "--out", str(tmp / "broker"), *pp)
    run("inventory", "list", "--json")
    for n in ("node-1", "cold-1", "node-2"):
        run("inventory", "show", n, "--json")
        run("inventory", "show", n)
    run("audit", "show", "--json")

    secrets = {PSK, PASSPHRASE}
    for key_path in (fleet.host_key, fleet.server_key):
        key = pki.load_key(key_path)
        secrets |= _secret_forms(pki.key_bytes(key, "der"))
        secrets.add(pki.key_bytes(key, "pem").decode().splitlines()[1])
    ca_key = pki.load_key(fleet.ca_key, PASSPHRASE.encode())
    secrets |= _secret_forms(ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    for board in bench.boards.values():
        for name, data in board.fs.items():
            if name.endswith((".key", ".key.der")):
                secrets |= _secret_forms(data)
    for recs in fleet.payload_keys(include_inactive=True).values():
        for key in recs.values():
            secrets |= _secret_forms(key)
    pending = fleet.pending_dir / "node-2"
    secrets |= _secret_forms((pending / "node.key.der").read_bytes())
    assert len(secrets) > 20

    haystacks = {"output": "\n".join(run.seen),
                 "audit.log": (fleet.root / "audit.log").read_text(),
                 "inventory": fleet.inventory_db.read_bytes().decode("latin-1")}
    for where, text in haystacks.items():
        for s in secrets:
            assert s not in text, "a secret appears in %s" % where

    key_files = [fleet.ca_key, fleet.host_key, fleet.server_key, tmp / "broker" / "server.key",
                 pending / "node.key.der", pending / "payload.key"] + list(fleet.keys_dir.glob("*.json"))
    assert len(key_files) >= 8
    for p in key_files:
        assert _mode(p) == 0o600, p
    for d in (fleet.pending_dir, fleet.keys_dir, pending):
        assert _mode(d) & 0o077 == 0, d
