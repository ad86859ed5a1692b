"""Security against the real broker and the real firmware: ACL isolation with a node's own credentials,
expired / not-yet-valid / revoked certificates, a node facing a broker it must not trust, secrets that
must never show up in output, logs or the database, and the modes of the files that hold them.

Broker-level refusals of a foreign CA and of a revoked certificate live in test_broker.py; here they are
taken further (the firmware itself, a revoked node's reconnect). Negatives are proven with an ordered
marker (MQTT keeps one client's messages in order) or after the node has logged its failures, never by
sleeping.
"""
import base64
import datetime
import json
import os
import re
import socket
import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key

from fieldnode import pki, protocol
from fieldnode.bench.broker import LOOPBACK, Broker
from fieldnode.bench.rig import Rig

from ingest_helpers import TIMEOUT, CliProcess, as_node, running_ingest

ENV = {"temperature_c": 20.0, "humidity_rh": 45.0, "pressure_pa": 101325.0}
NODES = ("node-1", "node-2")
SPARE = ("node-3", "node-4", "node-5")
INGEST_ID = "fieldnode-ingest"  # the default of `fieldnode ingest`


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """Two running nodes behind a broker that checks a CRL (empty at first); three more ids in the ACL."""
    r = Rig(tmp_path_factory.mktemp("rig"), NODES + SPARE, interval_s=0.2, environment=ENV, autostart=[])
    with r:
        r.broker.stop()
        r.crl_path = pki.write_crl(r.workdir / "crl.pem", pki.make_crl(r.ca_key, r.ca_cert, []))
        r.broker = Broker(r.workdir / "broker-crl", r.fleet.ca_cert, r.server_cert_path, r.server_key_path,
                          r.node_ids, host_cert_path=r.fleet.host_cert, crl_path=r.crl_path).start()
        r.fleet.save_broker(LOOPBACK, r.broker.port, host_port=r.broker.host_port)
        for node in NODES:
            r.add_node(node)
        yield r


@pytest.fixture(scope="module")
def ingest(rig, tmp_path_factory):
    """(store, events) of one ingest running for the whole module."""
    with running_ingest(rig, tmp_path_factory.mktemp("ingest") / "ingest.sqlite",
                        client_id=INGEST_ID) as (_, store, events):
        for node in NODES:
            events.wait_for(lambda e: len(e.stored_seqs(node)) >= 2, "messages from %s" % node)
        yield store, events


def _marker(attacker, events, name):
    """Publish a marker on the attacker's own namespace and wait until ingest has judged it: whatever the
    attacker published before has been delivered by then, or never will be."""
    topic = "fieldnode/node-1/%s" % name
    attacker.publish(topic, name.encode())
    events.wait_for(lambda e: any(r.topic == topic for r in e.of("rejected")), "the marker " + name)


# -- ACL isolation with a node's own credentials --------------------------------------------------------------

def test_a_nodes_credentials_cannot_publish_into_another_nodes_topics(rig, ingest):
    store, events = ingest
    genuine = next(r["payload"] for r in store.readings("node-2"))   # a real node-2 message, already stored
    before = len(events.items)
    with as_node(rig, "node-1") as attacker:
        attacker.publish("fieldnode/node-2/reading", genuine)          # PUBACKed (3.1.1 cannot refuse), dropped
        attacker.publish("fieldnode/node-2/alarm", genuine)
        attacker.publish("fieldnode/node-2/status", b"offline", retain=True)
        attacker.publish("fieldnode/node-2/cmd/reboot", b"now")
        attacker.publish("fieldnode/node-3/reading", genuine)
        _marker(attacker, events, "marker-publish")
    after = events.items[before:]
    # nothing the attacker sent into other namespaces reached the host: not even as a duplicate or a rejection
    assert not [e for e in after if e.node != "node-1" and e.kind in ("duplicate", "rejected", "conflict")]
    # (node-1's own 'offline' is its will: the node is off while its credentials are used elsewhere)
    assert not [e for e in after if e.kind == "status" and e.reason == "offline" and e.node != "node-1"]
    assert "node-3" not in store.stats()["nodes"]


def test_a_nodes_credentials_cannot_read_another_nodes_topics(rig, ingest):
    store, events = ingest
    with as_node(rig, "node-1", client_id="node-1-reader") as attacker:
        attacker.subscribe("fieldnode/node-2/#", "fieldnode/#", "fieldnode/+/reading", "#")
        # node-2 publishes while the attacker is subscribed: ingest proves it
        start = events.committed_up_to("node-2")
        events.wait_for(lambda e: e.committed_up_to("node-2") >= start + 3, "node-2 publishing meanwhile")
        # then a marker through the one topic node-1 may both write and read
        attacker.publish("fieldnode/node-1/cmd/marker", b"marker")
        got = attacker.receive_until(b"marker")
    assert got == [("fieldnode/node-1/cmd/marker", b"marker")]


def test_a_message_moved_to_another_nodes_topic_does_not_verify(rig, ingest):
    store, events = ingest
    genuine = next(r["payload"] for r in store.readings("node-2"))
    with as_node(rig, "node-1") as attacker:
        attacker.publish("fieldnode/node-1/reading", genuine)   # node-2's message in node-1's own namespace
        (ev,) = events.wait_for(lambda e: [r for r in e.of("rejected", "node-1")
                                           if r.topic == "fieldnode/node-1/reading"], "the rejection")
    assert ev.reason == "bad-tag"   # the MAC covers the node id
    assert [r["payload"] for r in store.rejected("bad-tag")] == [genuine]


def test_a_nodes_credentials_hold_no_session_but_their_own(rig, ingest):
    """The node listener makes the certificate's CN the client id: node-1's credentials asking for node-2's
    client id, or ingest's, get node-1's. Nobody's session is taken over: node-2 goes on publishing, no
    'offline' will fires for it, and ingest judges everything the attacker sent."""
    store, events = ingest
    before = len(events.items)
    log_before = len(rig.broker.log_text())
    for asked in ("node-2", INGEST_ID):
        with as_node(rig, "node-1", client_id=asked) as attacker:
            _marker(attacker, events, "asked-" + asked)  # ingest is still there and still subscribed
        start = events.committed_up_to("node-2")
        events.wait_for(lambda e: e.committed_up_to("node-2") >= start + 2, "node-2 publishing")
    assert not [e for e in events.items[before:] if e.kind == "status" and e.node == "node-2"
                and e.reason == "offline"]
    log = rig.broker.log_text()[log_before:]
    for asked in ("node-2", INGEST_ID):
        assert "Client %s already connected" % asked not in log
        assert not re.search(r"as %s \([^)]*u'node-1'\)" % re.escape(asked), log)
    # both attempts got node-1's own id (the real node-1 was off; it came back after each)
    assert len(re.findall(r"as node-1 \([^)]*u'node-1'\)", log)) >= 2


def test_each_listener_takes_only_its_own_certificates(rig, tmp_path):
    """A node's certificate is refused on the host tools' listener (where client ids are free to choose),
    and the host's on the nodes' listener."""
    cert, key = _client_files(tmp_path, rig, "node-5")
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED|UNKNOWN_CA|BAD_CERTIFICATE"):
        _refusal(rig.broker.host_port, rig.fleet.ca_cert, cert, key)
    f = rig.fleet
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED|UNKNOWN_CA|BAD_CERTIFICATE"):
        _refusal(rig.broker.port, f.ca_cert, f.host_cert, f.host_key)
    assert _connack(rig.broker.host_port, f.ca_cert, f.host_cert, f.host_key) == b"\x20\x02\x00\x00"
    assert _connack(rig.broker.port, f.ca_cert, cert, key) == b"\x20\x02\x00\x00"


# -- certificates the broker must refuse -------------------------------------------------------------------

def _tls(port, ca, cert, key):
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _refusal(port, ca, cert, key):
    """Handshake, then read without sending: in TLS 1.3 the broker checks the client certificate after the
    client's handshake is done, and a refusal arrives as an alert on this first read."""
    with _tls(port, ca, cert, key) as tls:
        return tls.recv(1)


def _connack(port, ca, cert, key):
    with _tls(port, ca, cert, key) as tls:
        tls.sendall(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06node-5")
        return tls.recv(4)


def _client_files(tmp_path, rig, name, **validity):
    key, cert = pki.issue_client_cert(rig.ca_key, rig.ca_cert, "node-5", **validity)
    return pki.write_cert(tmp_path / (name + ".pem"), cert), pki.write_key(tmp_path / (name + ".key"), key)


def test_an_expired_client_certificate_is_refused(rig, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _client_files(tmp_path, rig, "expired", not_before=now - datetime.timedelta(days=30),
                              not_after=now - datetime.timedelta(days=1))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_EXPIRED"):
        _refusal(rig.broker.port, rig.fleet.ca_cert, cert, key)
    fresh_cert, fresh_key = _client_files(tmp_path, rig, "fresh")   # same CA and CN, in its validity
    assert _connack(rig.broker.port, rig.fleet.ca_cert, fresh_cert, fresh_key) == b"\x20\x02\x00\x00"


def test_a_client_certificate_not_valid_yet_is_refused(rig, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _client_files(tmp_path, rig, "future", not_before=now + datetime.timedelta(days=1),
                              not_after=now + datetime.timedelta(days=30))
    with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE"):   # OpenSSL has no alert of its own for it
        _refusal(rig.broker.port, rig.fleet.ca_cert, cert, key)
    fresh_cert, fresh_key = _client_files(tmp_path, rig, "fresh")   # the same, valid now: accepted
    assert _connack(rig.broker.port, rig.fleet.ca_cert, fresh_cert, fresh_key) == b"\x20\x02\x00\x00"


def test_a_revoked_node_is_refused_when_it_reconnects(rig, ingest):
    """The real firmware: revoke node-4's certificate, restart it (a reset), and it never gets in again;
    node-2 carries on meanwhile."""
    store, events = ingest
    node = rig.add_node("node-4")
    events.wait_for(lambda e: len(e.stored_seqs("node-4")) >= 2, "node-4's first messages")
    old_boot = max(r["boot"] for r in store.readings("node-4"))
    serial = pki.load_cert(node.folder / "node.der").serial_number
    revoked = pki.write_crl(rig.workdir / "crl-node-4.pem", pki.make_crl(rig.ca_key, rig.ca_cert, [serial]))
    rig.broker.update_crl(revoked)
    failures = rig.broker.log_text().count("certificate verify failed")
    node.stop()
    restart = len(node.lines)
    node.start()
    try:
        node.wait_for_line(r"broker unreachable", start=restart)
        again = len(node.lines)
        node.wait_for_line(r"broker unreachable", start=again)   # and again, after its backoff
        mark = events.committed_up_to("node-2")
        events.wait_for(lambda e: e.committed_up_to("node-2") > mark, "node-2 still delivering")
    finally:
        node.stop()
    assert not [line for line in node.lines[restart:] if "connected to" in line]
    assert not [r for r in store.readings("node-4") if r["boot"] > old_boot]
    assert rig.broker.log_text().count("certificate verify failed") >= failures + 2


# -- a node facing a broker it must not trust ---------------------------------------------------------------

def _impostor_broker(rig, tmp_path, issuer, hostnames=("localhost",)):
    """A broker with a server certificate from `issuer` that trusts the fleet CA for clients: if a node did
    not check the server, it would connect and publish here."""
    key, cert = pki.issue_server_cert(*issuer, hostnames=hostnames, ips=("127.0.0.1",) if "localhost" in
                                      hostnames else ())
    return Broker(tmp_path / "impostor", rig.fleet.ca_cert, pki.write_cert(tmp_path / "imp.pem", cert),
                  pki.write_key(tmp_path / "imp.key", key), rig.node_ids, host_cert_path=rig.fleet.host_cert)


@pytest.mark.parametrize("case,node_id", [("rogue-ca", "node-3"), ("wrong-name", "node-5")])
def test_a_node_refuses_a_broker_it_must_not_trust(rig, tmp_path, case, node_id):
    """A server certificate from another CA, or the fleet CA's for another name: the real firmware logs
    the TLS failure and never connects, so never publishes."""
    issuer = pki.make_ca("rogue CA") if case == "rogue-ca" else (rig.ca_key, rig.ca_cert)
    hostnames = ("localhost",) if case == "rogue-ca" else ("broker.elsewhere.example",)
    with _impostor_broker(rig, tmp_path, issuer, hostnames) as impostor:
        node = rig.add_node(node_id, broker_port=impostor.port)
        try:
            node.wait_for_line(r"broker unreachable", timeout=TIMEOUT)
            start = len(node.lines)
            node.wait_for_line(r"broker unreachable", timeout=TIMEOUT, start=start)
        finally:
            node.stop()
        log = impostor.log_text()
    console = "\n".join(node.lines)
    assert "connected to" not in console, console
    expected = "verif|certificate|CN" if case == "rogue-ca" else "CN|name"
    assert re.search(expected, console, re.I), console   # the node says why
    assert "as %s" % node_id not in log   # mosquitto never saw an MQTT CONNECT from it
    assert "Received PUBLISH" not in log


# -- secrets never in output, logs or the database ------------------------------------------------------------

def _forms(secret):
    """The ways a secret could leak into text or bytes."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.b64encode(secret).rstrip(b"=")]


def _private_key_forms(key):
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    body_lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return _forms(der) + _forms(scalar) + body_lines + [b"PRIVATE KEY-----"]


def fleet_secrets(workdir, fleet, nodes_dir):
    """Every secret of a rig on disk: payload keys (and the keys derived from them), private keys."""
    found = []
    for keys in fleet.payload_keys(include_inactive=True).values():
        for master in keys.values():
            found += _forms(master)
            for derived in protocol.derive_keys(master):
                found += _forms(derived)
    for path in (fleet.ca_key, fleet.host_key, *workdir.glob("server/*.key")):
        found += _private_key_forms(load_pem_private_key(path.read_bytes(), None))
    for folder in nodes_dir.iterdir():
        if (folder / "node.key.der").exists():
            found += _private_key_forms(load_der_private_key((folder / "node.key.der").read_bytes(), None))
            found += _forms((folder / "payload.key").read_bytes())
    assert len(found) > 50
    return found


def assert_no_secret(secrets, where):
    for name, data in where.items():
        data = data if isinstance(data, bytes) else data.encode()
        for s in secrets:
            assert s not in data, "a secret (%d bytes) appears in %s" % (len(s), name)


def test_no_secret_in_what_the_commands_print_log_or_store(rig, ingest, tmp_path):
    store, events = ingest
    fleet = ["--fleet", str(rig.fleet.root)]
    db = tmp_path / "cli-ingest.sqlite"
    outputs = {}
    for name, args in (("monitor --json", ["monitor", *fleet, "--count", "3", "--json"]),
                       ("monitor", ["monitor", *fleet, "--count", "3"]),
                       ("ingest --json", ["ingest", *fleet, "--db", str(db), "--count", "3", "--json",
                                          "--client-id", "fieldnode-secrets-json"]),
                       ("ingest", ["ingest", *fleet, "--db", str(db), "--count", "3",
                                   "--client-id", "fieldnode-secrets"]),
                       ("gaps", ["gaps", "--db", str(db)]), ("gaps --json", ["gaps", "--db", str(db), "--json"])):
        proc = CliProcess(*args)
        try:
            assert proc.wait() == 0, (name, proc.stderr)
        finally:
            proc.kill()
        assert proc.lines, name   # it did print something
        outputs[name + " stdout"] = "\n".join(proc.lines)
        outputs[name + " stderr"] = proc.stderr
    store.flush()
    outputs["broker log"] = rig.broker.log_text()
    for node_id, node in rig.nodes.items():
        outputs["%s console" % node_id] = "\n".join(node.lines)
    for path in (db, store.path):
        for p in path.parent.glob(path.name + "*"):
            outputs[str(p)] = p.read_bytes()
    assert_no_secret(fleet_secrets(rig.workdir, rig.fleet, rig.workdir / "nodes"), outputs)


def test_no_secret_in_what_the_demo_prints(tmp_path):
    demo = CliProcess("demo", "--nodes", "2", "--duration", "4", "--json", "--interval", "0.5",
                      env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        demo.wait_for_lines(lambda lines: len(lines) >= 2, "the demo's first readings")
        # the demo's throwaway fleet exists only while it runs: read its secrets now
        (workdir,) = tmp_path.glob("fieldnode-demo-*")
        from fieldnode.fleet import Fleet
        found = fleet_secrets(workdir, Fleet(workdir / "fleet"), workdir / "nodes")
        assert demo.wait() == 0, demo.stderr
    finally:
        demo.kill()
    rows = [json.loads(line) for line in demo.lines]
    assert {r["node"] for r in rows} == {"node-1", "node-2"}
    assert_no_secret(found, {"demo stdout": "\n".join(demo.lines), "demo stderr": demo.stderr})


# -- modes of the files that hold secrets ---------------------------------------------------------------------

def test_secret_files_are_private(rig, ingest, tmp_path):
    store, _ = ingest
    f = rig.fleet
    private = [f.ca_key, f.host_key, rig.server_key_path, *f.keys_dir.glob("*.json"), store.path]
    for node in rig.nodes.values():
        private += [node.folder / "node.key.der", node.folder / "payload.key"]
    assert len(private) >= 4 + 2 * len(NODES)
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, "%s is %o" % (path, path.stat().st_mode & 0o777)
    # the payload keys' folder: nobody else may even list it
    assert f.keys_dir.stat().st_mode & 0o077 == 0
    # an ingest database made by the CLI is private from its first byte
    cli_db = tmp_path / "fresh.sqlite"
    proc = CliProcess("ingest", "--fleet", str(f.root), "--db", str(cli_db), "--count", "1",
                      "--client-id", "fieldnode-modes-" + os.urandom(3).hex())
    try:
        assert proc.wait() == 0, proc.stderr
    finally:
        proc.kill()
    assert cli_db.stat().st_mode & 0o777 == 0o600
