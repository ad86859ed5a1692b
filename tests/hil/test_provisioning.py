"""Provisioning on the bench, end to end: `fieldnode ca init`, `broker-config` run by a real mosquitto,
firmware deployed onto virtual boards (the MicroPython Unix port behind a pty, driven by stock mpremote
through fieldnode.board), `fieldnode provision` — and the nodes boot from what was deployed and publish
readings the host verifies. Then: a node cannot write into another node's topics, a revoked node is
refused, the audit trail catches tampering, a batch of 20 boards killed midway resumes without a second
certificate for anyone, and no secret ever shows in an output or a log.

Every process started here is stopped here, by pid; every wait is bounded and on a condition.
"""
import json
import os
import re
import ssl
import socket
import time

import pytest

from fieldnode import pki
from fieldnode.bench.broker import LOOPBACK, free_port
from fieldnode.bench.collector import Collector
from fieldnode.fleet import Fleet, KeyRing
from fieldnode.inventory import Inventory
from fieldnode.monitor import Monitor

from conftest import pid_exists
from provisioning_helpers import (CLI, Client, Console, Mosquitto, copy_fleet, frozen, pem_credentials,
                                  start_vboards)

deploy_mod = pytest.importorskip("fieldnode.deploy", reason="fieldnode.deploy (firmware deployment) not there yet")

NODES = ("node-a", "node-b")
INTERVAL = "0.5"
BATCH = 20
TIMEOUT = 30.0


class Site:
    pass


def _broker_config_args(site):
    args = ["broker-config", "--out", site.broker_dir, "--port", site.port, "--host-port", site.host_port,
            "--bind", LOOPBACK,
            "--log-file", site.broker_dir / "mosquitto.log"]
    # as root, mosquitto switches to its own user before reading the key: keep it as the user we are
    return args + (["--user", "root"] if os.geteuid() == 0 else [])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site()
    s.dir = tmp_path_factory.mktemp("site")
    s.port = free_port()
    s.host_port = free_port()
    s.fleet = Fleet(s.dir / "fleet")
    s.cli = CLI(s.fleet.root)
    s.broker_dir = s.dir / "broker"
    s.vboards = {}
    s.broker = None
    pids = []
    try:
        s.cli("ca", "init", "--broker", "%s:%d" % (LOOPBACK, s.port), "--operator", "setup")
        s.cli(*_broker_config_args(s))  # the site's broker runs before any node exists
        s.broker = Mosquitto(s.broker_dir / "mosquitto.conf", s.broker_dir / "mosquitto.log").start()
        pids.append(s.broker.pid)
        s.vboards = dict(zip(NODES, start_vboards([s.dir / ("fs-" + name) for name in NODES])))
        pids += [vb.pid for vb in s.vboards.values()]
        for vb in s.vboards.values():
            deploy_mod.deploy(vb.port, "unix", fleet=s.fleet.root, operator="tech-1")
        s.results = {}
        for name in NODES:
            proc = s.cli("provision", name, "--port", s.vboards[name].port, "--interval", INTERVAL, "--json",
                         "--operator", "tech-1")
            s.results[name] = json.loads(proc.stdout)
        s.cli(*_broker_config_args(s))  # now with the nodes in the ACL
        s.broker.reload()
        yield s
    finally:
        for vb in s.vboards.values():
            vb.stop()
        if s.broker:
            s.broker.stop()
        for pid in pids:
            assert not pid_exists(pid), "process %d still running after the test" % pid


@pytest.fixture(scope="module")
def seen(site):
    c = Collector()
    f = site.fleet
    with Monitor(LOOPBACK, site.host_port, f.ca_cert, f.host_cert, f.host_key, KeyRing(f), **c.callbacks()):
        yield c


def on_board(site, name):
    fs = site.dir / ("fs-" + name)
    return fs, json.loads((fs / "config.json").read_text())


def readings(c, node, key_id=None, after_seq=0):
    return [m for m in c.of(node, "reading") if m.seq > after_seq and (key_id is None or m.key_id == key_id)]


def wait_readings(c, node, n, **kw):
    return c.wait_for(lambda c: (lambda r: r if len(r) >= n else None)(readings(c, node, **kw)), TIMEOUT,
                      "%d readings from %s" % (n, node))


# -- 1. provisioned boards publish ----------------------------------------------------------------------

def test_provisioned_virtual_boards_boot_from_the_deployment_and_publish_verified_readings(site, seen):
    with Inventory(site.fleet.inventory_db) as inv:
        for name in NODES:
            node = inv.get(name)
            fs, cfg = on_board(site, name)
            assert node["status"] == "provisioned" and node["operator"] == "tech-1"
            assert node["mac"] and node["mac"] == site.results[name]["mac"]
            # what the board holds is what the inventory recorded
            assert node["files"]["config.json"] == site.results[name]["config_sha256"]
            assert pki.fingerprint(pki.load_cert(fs / cfg["files"]["cert"])) == node["cert_fingerprint"]
            assert cfg["bench"]["i2c"]  # the virtual board said where its sensor bus is
            assert (fs / "main.py").exists() and (fs / "node" / "app.py").exists() or \
                (fs / "node").is_dir()  # deployed firmware: the vboard runs nothing else
    for name in NODES:
        got = wait_readings(seen, name, 3)
        assert {m.key_id for m in got} == {site.results[name]["key_id"]}
        assert all(m.body.as_dict()["temperature_c"] is not None for m in got)
    assert not [r for r in seen.rejected if r[0] in NODES]


# -- 2. the ACL confines each node -----------------------------------------------------------------------

def test_a_node_cannot_publish_into_another_nodes_topics(site, tmp_path):
    fs, cfg = on_board(site, "node-a")
    cert, key = pem_credentials(fs, cfg, tmp_path / "stolen")  # node-a's own credentials, off its board
    f = site.fleet
    host = Client(site.host_port, f.ca_cert, f.host_cert, f.host_key, "host-watch").connect()
    try:
        with frozen(site.vboards["node-a"]):
            intruder = Client(site.port, f.ca_cert, cert, key, "node-a-intruder").connect()
            try:
                host.subscribe("fieldnode/#")
                for topic in ("fieldnode/node-b/reading", "fieldnode/node-b/alarm", "fieldnode/node-b/status"):
                    intruder.publish(topic, b"forged-by-node-a")  # PUBACKed (MQTT 3.1.1 cannot say no), dropped
                intruder.publish("fieldnode/node-a/cmd/marker", b"marker")  # its own namespace: delivered
                got = host.receive_until(b"marker")
            finally:
                intruder.close()
    finally:
        host.close()
    assert not [t for t, p in got if p == b"forged-by-node-a"]
    assert ("fieldnode/node-a/cmd/marker", b"marker") in got


# -- 3. rotation on a live node -------------------------------------------------------------------------

def test_rotation_gives_new_keys_and_the_node_keeps_publishing(site, seen):
    before = max(m.seq for m in wait_readings(seen, "node-b", 1))
    proc = site.cli("rotate", "node-b", "--port", site.vboards["node-b"].port, "--json", "--overlap-days", "1")
    res = json.loads(proc.stdout)
    assert res["key_id"] == 2 and res["previous_key_id"] == 1
    # the node restarted with its new identity; the host opens its readings with key id 2
    got = wait_readings(seen, "node-b", 2, key_id=2, after_seq=before)
    assert got[0].seq > before  # the sequence continues across the rotation
    assert set(KeyRing(site.fleet).get("node-b")) == {1, 2}  # the overlap


# -- 3b. the one-liner: flash -> deploy -> provision ------------------------------------------------------

def test_bringup_flashes_deploys_and_provisions_in_one_command(site, seen, tmp_path):
    from fieldnode.bench.esp_image import build_image
    from fieldnode.bench.vbootloader import VBootloaderProcess

    image = build_image("esp32", 64 * 1024)
    fw = tmp_path / "ESP32_GENERIC.bin"
    fw.write_bytes(image)
    backing = tmp_path / "flash.bin"
    backing.write_bytes(b"\xa5" * (512 * 1024))
    loader = VBootloaderProcess("esp32", backing, mac="24:0a:c4:00:00:0c", log=tmp_path / "vbootloader.log")
    loader.start()
    (vb,) = start_vboards([site.dir / "fs-node-c"])  # the bench's two emulators: ROM loader and MicroPython
    pids = [loader.pid, vb.pid]
    try:
        # refused before anything is flashed: node-b exists
        site.cli("bringup", "node-b", "--port", loader.url, "--repl-port", vb.port, "--firmware", fw,
                 "--board", "unix", code=1)
        assert backing.read_bytes() == b"\xa5" * (512 * 1024)
        proc = site.cli("bringup", "node-c", "--port", loader.url, "--repl-port", vb.port, "--firmware", fw,
                        "--board", "unix", "--interval", INTERVAL, "--json", "--operator", "tech-3")
        res = json.loads(proc.stdout)
        assert backing.read_bytes()[0x1000:0x1000 + len(image)] == image  # at the ESP32's offset
        assert res["flash"]["verified"] and res["deploy"]["first_line"].startswith("fieldnode:")
        assert res["provision"]["result"] == "provisioned"
        site.cli(*_broker_config_args(site))
        site.broker.reload()
        got = wait_readings(seen, "node-c", 2)
        assert {m.key_id for m in got} == {res["provision"]["key_id"]}
        records = json.loads(site.cli("audit", "show", "--json").stdout)[-5:]
        assert [(r["action"], r["result"]) for r in records] == [
            ("flash", "ok"), ("deploy", "ok"), ("provision", "ok"), ("bringup", "ok"), ("broker-config", "ok")]
        assert [r["node"] for r in records[:4]] == ["node-c", None, "node-c", "node-c"]  # (deploy: no id yet)
        assert records[1]["details"]["port"] == vb.port and records[3]["sha256"]["firmware"] == res["flash"]["sha256"]
    finally:
        vb.stop()
        loader.stop()
    assert not [p for p in pids if pid_exists(p)]


# -- 4. the audit trail -----------------------------------------------------------------------------------

def test_audit_verify_passes_then_names_the_tampered_record(site, tmp_path):
    proc = site.cli("audit", "verify", "--json")
    assert json.loads(proc.stdout)["ok"]
    records = json.loads(site.cli("audit", "show", "--json").stdout)
    assert [r["action"] for r in records][:7] == ["ca init", "broker-config", "deploy", "deploy", "provision",
                                                  "provision", "broker-config"]
    prov = [r for r in records if r["action"] == "provision" and r["node"] in NODES]
    assert len(prov) == 2
    assert all(r["mac"] and r["sha256"]["config"] and r["operator"] == "tech-1" for r in prov)
    copy = copy_fleet(site.fleet.root, tmp_path / "fleet-copy")
    log = copy / "audit.log"
    lines = log.read_text().splitlines()
    rec = json.loads(lines[4])
    assert rec["action"] == "provision"
    rec["mac"] = "02:00:00:00:00:00"  # someone "fixes" which board was provisioned
    lines[4] = json.dumps(rec, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    proc = CLI(copy)("audit", "verify", code=1)
    assert proc.stderr.strip() == "fieldnode: audit record 5: its hash does not match its content (edited)"


# -- 5. revocation ----------------------------------------------------------------------------------------

def test_a_revoked_node_is_refused_by_the_broker(site, seen, tmp_path):
    fs, cfg = on_board(site, "node-a")
    cert, key = pem_credentials(fs, cfg, tmp_path / "node-a")
    last_b = max(m.seq for m in wait_readings(seen, "node-b", 1))
    console = Console(site.vboards["node-a"].port).start()
    try:
        site.cli("revoke", "node-a", "--reason", "board lost", "--operator", "tech-2")
        site.cli(*_broker_config_args(site))
        assert "user node-a" not in (site.broker_dir / "acl").read_text()
        # mosquitto checks the CRL when a client connects: restart it so that every node has to reconnect
        site.broker.stop()
        mark = console.mark()
        site.broker.start()
        site.broker.wait_log(r"New client connected from \S+ as node-b ", "node-b to reconnect")
        site.broker.wait_log(r"certificate verify failed", "node-a's reconnection to be refused")
        # the node's console says it: its TLS handshake failed (not "connection refused": the broker is up)
        line = console.wait_for(r"^fieldnode: broker unreachable \((?!\[Errno 111\]).*$", since=mark)
    finally:
        console.stop()
    assert "queued" in line  # and it keeps its readings for later, sealed
    # the refusal is the CRL's: the node's own certificate, presented afresh, is revoked
    ctx = ssl.create_default_context(cafile=str(site.fleet.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
        with ctx.wrap_socket(socket.create_connection((LOOPBACK, site.port), timeout=TIMEOUT),
                             server_hostname="localhost") as tls:
            tls.recv(1)
    # node-b carries on; node-a never got back in
    wait_readings(seen, "node-b", 2, after_seq=last_b)
    assert not re.search(r"as node-a ", site.broker.log_text())
    assert KeyRing(site.fleet).get("node-a") is None
    with Inventory(site.fleet.inventory_db) as inv:
        assert inv.get("node-a")["status"] == "revoked"
    rec = json.loads(site.cli("audit", "show", "--node", "node-a", "--json").stdout)[-1]
    assert (rec["action"], rec["operator"], rec["details"]["reason"]) == ("revoke", "tech-2", "board lost")


# -- 6. a batch of 20, killed midway -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def twenty(site, tmp_path_factory):
    """20 more virtual boards (no firmware needed to provision them), started together."""
    d = tmp_path_factory.mktemp("twenty")
    boards = start_vboards([d / ("fs-%02d" % i) for i in range(BATCH)])
    try:
        yield d, boards
    finally:
        pids = [b.pid for b in boards]
        for b in boards:
            b.stop()
        assert not [p for p in pids if pid_exists(p)]


def test_a_batch_killed_midway_resumes_without_a_second_certificate(site, twenty):
    d, boards = twenty
    csv = d / "nodes.csv"
    csv.write_text("node_id,port,board\n" +
                   "".join("bulk-%02d,%s,unix\n" % (i, b.port) for i, b in enumerate(boards)))
    # A trap on the first board: its payload key cannot be renamed into place, so that row fails after its
    # certificate was issued — the state a kill between "issued" and "on the board" leaves.
    trap = d / "fs-00" / "payload.k1.key"
    trap.mkdir()
    (trap / "keep").write_text("x")
    started = time.monotonic()
    proc = site.cli.popen("provision", "--batch", csv, "--json", "--jobs", "4", "--operator", "batch")
    done, lines = 0, []
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            done += lines[-1]["result"] == "provisioned"
            if done == 6:
                proc.kill()  # SIGKILL by pid: no cleanup, mid-row for the boards in flight
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    site.cli.transcript.append("\n".join(json.dumps(l) for l in lines) + stderr)
    assert done == 6, "the batch ended before 6 rows were provisioned: %s %s" % (lines, stderr)
    trapped = {l["node_id"]: l for l in lines if l["result"] == "failed"}
    assert "bulk-00" in trapped, lines
    with Inventory(site.fleet.inventory_db) as inv:
        pending_serial = [c["serial"] for c in inv.certificates(subject="bulk-00")]
    assert len(pending_serial) == 1 and site.fleet.pending_dir.joinpath("bulk-00").is_dir()

    trap.joinpath("keep").unlink()
    trap.rmdir()
    rerun = site.cli("provision", "--batch", csv, "--json", "--jobs", "4", "--operator", "batch")
    report = [json.loads(l) for l in rerun.stdout.splitlines()]
    summary = report[-1]
    assert summary["ok"] and summary["failed"] == 0 and summary["rows"] == BATCH
    rows = {r["node_id"]: r for r in report[:-1]}
    assert {n for n, r in rows.items() if r["result"] == "skipped"} >= {l["node_id"] for l in lines
                                                                         if l["result"] == "provisioned"}
    assert rows["bulk-00"]["resumed"] and rows["bulk-00"]["cert_serial"] == pending_serial[0]
    elapsed = time.monotonic() - started

    # exactly one certificate per node: in the inventory, in the CA's issued records, on the board
    with Inventory(site.fleet.inventory_db) as inv:
        for i, b in enumerate(boards):
            node = "bulk-%02d" % i
            certs = inv.certificates(subject=node)
            assert len(certs) == 1 and certs[0]["status"] == "active", (node, certs)
            assert inv.get(node)["status"] == "provisioned"
            cfg = json.loads((d / ("fs-%02d" % i) / "config.json").read_text())
            board_cert = pki.load_cert(d / ("fs-%02d" % i) / cfg["files"]["cert"])
            assert "%x" % board_cert.serial_number == certs[0]["serial"]
            assert list(site.fleet.key_records(node)) == [1]
    issued = {}
    for p in site.fleet.issued_dir.glob("*.pem"):
        cn = pki.load_cert(p).subject.rfc4514_string()
        issued[cn] = issued.get(cn, 0) + 1
    assert {cn: n for cn, n in issued.items() if cn.startswith("CN=bulk-")} == \
        {"CN=bulk-%02d" % i: 1 for i in range(BATCH)}
    assert not [p for p in site.fleet.pending_dir.iterdir() if not p.name.startswith("batch-")]
    assert elapsed < 120, "20 boards took %.0fs" % elapsed


# -- 7. secrets ---------------------------------------------------------------------------------------------

def _forms(data):
    import base64
    return {data.hex(), base64.b64encode(data).decode()}


def test_no_secret_in_any_output_or_log_and_key_files_are_0600(site, twenty):
    d, boards = twenty
    for name in NODES + ("bulk-00",):
        site.cli("inventory", "show", name, "--json")
    site.cli("inventory", "list")
    site.cli("audit", "show")
    secrets = set()
    for p in [site.fleet.host_key, site.fleet.server_key, site.fleet.ca_key]:
        key = pki.load_key(p)
        secrets |= _forms(pki.key_bytes(key, "der"))
        secrets.add(pki.key_bytes(key, "pem").decode().splitlines()[1])
    fss = [site.dir / ("fs-" + n) for n in NODES] + [d / ("fs-%02d" % i) for i in range(BATCH)]
    for fs in fss:
        for p in fs.iterdir():
            if p.is_file() and p.name.endswith((".key", ".key.der")):
                secrets |= _forms(p.read_bytes())
    for keys in site.fleet.payload_keys(include_inactive=True).values():
        for k in keys.values():
            secrets |= _forms(k)
    assert len(secrets) > 4 * (len(NODES) + BATCH)
    places = {"CLI output": "\n".join(site.cli.transcript),
              "audit.log": (site.fleet.root / "audit.log").read_text(),
              "inventory": site.fleet.inventory_db.read_bytes().decode("latin-1"),
              "broker log": site.broker.log_text(since_start=False)}
    for where, text in places.items():
        leaked = [s[:8] for s in secrets if s in text]
        assert not leaked, "secrets in %s" % where
    key_files = [site.fleet.ca_key, site.fleet.host_key, site.fleet.server_key, site.broker_dir / "server.key"]
    key_files += list(site.fleet.keys_dir.glob("*.json"))
    for p in key_files:
        assert os.stat(p).st_mode & 0o777 == 0o600, p
