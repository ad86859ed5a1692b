"""The bench broker against real clients: who may connect, publish and subscribe where.

Waits are bounded (Event/Queue with a timeout); negatives are proven with an ordered marker message, never
by sleeping: MQTT keeps one client's messages in order, so once the marker arrives an earlier forbidden
message would have arrived too.
"""
import os
import queue
import socket
import ssl
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

from fieldnode import paths, pki
from fieldnode.bench import broker as broker_mod
from fieldnode.bench.broker import LOOPBACK, Broker, BrokerError, render_acl, render_config
from fieldnode.errors import UsageError

TIMEOUT = 10.0
# MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "probe".
CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"


class Client:
    """A paho 2.x client over mutual TLS, started in its own network thread; every wait is bounded."""

    def __init__(self, port, ca, files, client_id):
        self.port = port
        self.connected = threading.Event()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(files.cert, files.key)
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.mqtt.tls_set_context(ctx)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = lambda client, userdata, msg: self.messages.put((msg.topic, msg.payload))
        self.mqtt.on_subscribe = lambda client, userdata, mid, codes, props: self.subacks.put(codes)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.connected.set()

    def connect(self):
        self.mqtt.connect(LOOPBACK, self.port, keepalive=30)
        self.mqtt.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK within %ss" % TIMEOUT
        return self

    def subscribe(self, *topics):
        """Subscribe (QoS 1) and return, per topic, whether the broker granted it."""
        self.mqtt.subscribe([(t, 1) for t in topics])
        codes = self.subacks.get(timeout=TIMEOUT)
        return [not code.is_failure for code in codes]

    def publish(self, topic, payload):
        info = self.mqtt.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "no PUBACK for %s" % topic

    def receive(self):
        return self.messages.get(timeout=TIMEOUT)

    def receive_until(self, marker):
        """Everything received up to and including the message whose payload is `marker`."""
        got = []
        while not got or got[-1][1] != marker:
            got.append(self.receive())
        return got

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def connect(broker, fleet_pki):
    """connect(cn) -> a connected Client for a fresh certificate with that CN (the host cert for the host)."""
    clients = []

    def make(cn):
        files = fleet_pki.host if cn == pki.HOST_CN else fleet_pki.client(cn)
        port = broker.host_port if cn == pki.HOST_CN else broker.port
        clients.append(Client(port, fleet_pki.ca, files, cn))
        return clients[-1].connect()
    yield make
    for c in clients:
        c.close()


def _tls(port, ca, cert, key):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def raw_connect(port, ca, cert=None, key=None):
    """TLS handshake + MQTT CONNECT with Python's ssl; returns the CONNACK bytes."""
    with _tls(port, ca, cert, key) as tls:
        tls.sendall(CONNECT)
        return tls.recv(4)


def refused(port, ca, cert=None, key=None):
    """Handshake and wait for the broker's verdict without sending anything. In TLS 1.3 the client's
    handshake ends before the server has checked its certificate, so a refusal arrives as an alert on the
    first read (sending first could race the broker's close and turn the alert into a reset)."""
    with _tls(port, ca, cert, key) as tls:
        return tls.recv(1)


CONNACK_OK = b"\x20\x02\x00\x00"


# -- config rendering ----------------------------------------------------------------------------------

def test_acl_grants_each_node_only_its_own_topics():
    acl = render_acl(["node-1", "node-2"])
    assert "user node-1\ntopic write fieldnode/node-1/#\ntopic read fieldnode/node-1/cmd/#\n" in acl
    assert "user fieldnode-host\ntopic read fieldnode/#\n" in acl
    assert "pattern" not in acl


@pytest.mark.parametrize("bad", ["node-1\ntopic readwrite #", "node/1", "node+", "#", "", "x" * 33,
                                 "fieldnode-host", "fieldnode-ingest"])
def test_acl_rejects_ids_that_could_escape_their_namespace(bad):
    with pytest.raises(UsageError):
        render_acl([bad])


def test_config_is_mutual_tls_on_loopback_only():
    conf = render_config(18883, "ca.pem", "server.pem", "server.key", "acl", host_port=18884,
                         host_cafile="host.pem", crlfile="crl.pem", run_as="root")
    for line in ("require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", "tls_version tlsv1.2", "crlfile crl.pem", "acl_file acl",
                 "persistence false", "user root"):
        assert line + "\n" in conf
    # two listeners: the nodes' (fleet CA, CRL, CN as client id), then the host tools' (the pinned host cert)
    nodes, host = conf.split("listener 18884 127.0.0.1\n")
    assert "listener 18883 127.0.0.1\n" in nodes and "cafile ca.pem\n" in nodes
    assert "use_username_as_clientid true\n" in nodes and "crlfile crl.pem\n" in nodes
    assert "cafile host.pem\n" in host and "require_certificate true\n" in host
    assert "use_username_as_clientid" not in host and "crlfile" not in host
    with pytest.raises(BrokerError):
        render_config(1, "ca.pem\nlistener 1883", "s", "k", "a", host_port=2, host_cafile="h")
    with pytest.raises(ValueError, match="two ports"):
        render_config(1, "ca.pem", "s", "k", "a", host_port=1, host_cafile="h")


# -- publish / subscribe rights ------------------------------------------------------------------------

def test_host_receives_what_a_node_publishes(connect):
    host = connect(pki.HOST_CN)
    assert host.subscribe("fieldnode/#") == [True]
    node = connect("node-1")
    node.publish("fieldnode/node-1/reading", b"sealed-bytes")
    assert host.receive() == ("fieldnode/node-1/reading", b"sealed-bytes")


def test_node_cannot_publish_into_another_nodes_topic(connect):
    host = connect(pki.HOST_CN)
    assert host.subscribe("fieldnode/#") == [True]
    node = connect("node-1")
    node.publish("fieldnode/node-2/reading", b"forged")   # PUBACKed (MQTT 3.1.1 has no way to say no), dropped
    node.publish("fieldnode/node-1/alarm", b"marker")
    assert host.receive_until(b"marker") == [("fieldnode/node-1/alarm", b"marker")]


def test_node_cannot_read_other_nodes_topics(connect):
    node1 = connect("node-1")
    assert node1.subscribe("fieldnode/node-1/cmd/#") == [True]
    # mosquitto 2.0's acl_file does not check SUBSCRIBE (the SUBACK grants anything); it applies the read
    # ACL to each message on delivery. So the test is on delivery: node-2 publishes (PUBACKed, so routed)
    # and then node-1 sends itself a marker through its own cmd topic, which it may write and read.
    node1.subscribe("fieldnode/node-2/#", "fieldnode/#", "fieldnode/+/reading")
    connect("node-2").publish("fieldnode/node-2/reading", b"secret")
    node1.publish("fieldnode/node-1/cmd/marker", b"marker")
    assert node1.receive_until(b"marker") == [("fieldnode/node-1/cmd/marker", b"marker")]


def test_host_cannot_publish(connect):
    node = connect("node-1")
    assert node.subscribe("fieldnode/node-1/cmd/#") == [True]
    connect(pki.HOST_CN).publish("fieldnode/node-1/cmd/reboot", b"from-host")
    node.publish("fieldnode/node-1/cmd/marker", b"marker")
    assert node.receive_until(b"marker") == [("fieldnode/node-1/cmd/marker", b"marker")]


# -- who may connect -------------------------------------------------------------------------------------

def test_valid_client_certificate_connects(broker, fleet_pki):
    files = fleet_pki.client("node-3")
    assert raw_connect(broker.port, fleet_pki.ca, files.cert, files.key) == CONNACK_OK


def test_certificate_from_another_ca_is_refused(broker, fleet_pki, tmp_path):
    other_key, other_ca = pki.make_ca("some other CA")
    key, cert = pki.issue_client_cert(other_key, other_ca, "node-1")   # right CN, wrong issuer
    cert_path, key_path = pki.write_cert(tmp_path / "o.pem", cert), pki.write_key(tmp_path / "o.key", key)
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        refused(broker.port, fleet_pki.ca, cert_path, key_path)


def test_no_client_certificate_is_refused(broker, fleet_pki):
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        refused(broker.port, fleet_pki.ca)


def test_revoked_certificate_is_refused_after_crl_update(broker, fleet_pki):
    node2, node3 = fleet_pki.client("node-2"), fleet_pki.client("node-3")
    assert raw_connect(broker.port, fleet_pki.ca, node2.cert, node2.key) == CONNACK_OK
    broker.update_crl(fleet_pki.revoke(node2.serial))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
        refused(broker.port, fleet_pki.ca, node2.cert, node2.key)
    assert raw_connect(broker.port, fleet_pki.ca, node3.cert, node3.key) == CONNACK_OK


def test_node_removed_from_acl_can_no_longer_publish(broker, connect):
    host = connect(pki.HOST_CN)
    assert host.subscribe("fieldnode/#") == [True]
    node3, node1 = connect("node-3"), connect("node-1")
    broker.update_acl(["node-1", "node-2"])
    node3.publish("fieldnode/node-3/reading", b"after-removal")
    node3.publish("fieldnode/node-3/status", b"after-removal-2")
    node1.publish("fieldnode/node-1/reading", b"marker")
    assert host.receive_until(b"marker") == [("fieldnode/node-1/reading", b"marker")]


# The node side: MicroPython's ssl (mbedTLS) with the DER files write_node_tls makes, in both API forms.
MICROPYTHON_CONNECT = r"""
import socket, ssl, sys
port, form = int(sys.argv[1]), sys.argv[2]
def rd(name):
    with open(name, "rb") as f:
        return f.read()
ca, cert, key = rd("ca.der"), rd("node.der"), rd("node.key.der")
sock = socket.socket()
sock.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
if form == "context":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
else:
    tls = ssl.wrap_socket(sock, key=key, cert=cert, cadata=ca, cert_reqs=ssl.CERT_REQUIRED,
                          server_hostname="localhost")
tls.write(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06node-1")
print("CONNACK", tls.read(4))
tls.close()
"""


@pytest.mark.parametrize("form", ["context", "wrap_socket"])
def test_micropython_node_connects_with_der_files(broker, fleet_pki, tmp_path, form):
    key, cert = pki.issue_client_cert(fleet_pki.ca_key, fleet_pki.ca_cert, "node-1")
    folder = pki.write_node_tls(tmp_path / "node-1", fleet_pki.ca_cert, key, cert).ca.parent
    (folder / "connect.py").write_text(MICROPYTHON_CONNECT)
    proc = subprocess.run([paths.micropython_exe(), "connect.py", str(broker.port), form], cwd=folder,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == r"CONNACK b' \x02\x00\x00'", proc.stdout + proc.stderr
    assert "as node-1 (" in broker.log_text()


# -- process lifecycle -----------------------------------------------------------------------------------

def test_stop_leaves_no_process(fleet_pki, tmp_path):
    b = Broker(tmp_path / "b", fleet_pki.ca, fleet_pki.server_cert, fleet_pki.server_key, ["node-1"],
               host_cert_path=fleet_pki.host.cert)
    with b:
        pid = b.pid
        assert b.running and b.port
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    b.stop()   # idempotent


def test_workdir_key_copy_stays_private(broker):
    assert (broker.workdir / "server.key").stat().st_mode & 0o777 == 0o600
    assert broker.workdir.stat().st_mode & 0o777 == 0o700


def test_start_fails_fast_with_the_broker_log(fleet_pki, tmp_path):
    wrong_key = pki.write_key(tmp_path / "wrong.key", pki.new_key())   # does not match the server cert
    b = Broker(tmp_path / "b", fleet_pki.ca, fleet_pki.server_cert, wrong_key, ["node-1"],
               host_cert_path=fleet_pki.host.cert)
    with pytest.raises(BrokerError, match="exited with code"):
        b.start(timeout=TIMEOUT)
    assert not b.running


def test_port_taken_between_probe_and_bind_is_retried(fleet_pki, tmp_path, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken] + [broker_mod.free_port() for _ in range(3)])
        monkeypatch.setattr(broker_mod, "free_port", lambda: next(ports))
        with Broker(tmp_path / "b", fleet_pki.ca, fleet_pki.server_cert, fleet_pki.server_key, ["node-1"],
               host_cert_path=fleet_pki.host.cert) as b:
            assert b.port != taken
            assert "Address already in use" in b.log_text()
            assert raw_connect(b.host_port, fleet_pki.ca, fleet_pki.host.cert, fleet_pki.host.key) == CONNACK_OK


def test_one_port_for_both_listeners_is_an_error(fleet_pki, tmp_path):
    with pytest.raises(BrokerError, match="two ports"):
        Broker(tmp_path / "b", fleet_pki.ca, fleet_pki.server_cert, fleet_pki.server_key, ["node-1"],
               host_cert_path=fleet_pki.host.cert, port=18883, host_port=18883)


def test_fixed_port_in_use_is_an_error(fleet_pki, tmp_path):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        b = Broker(tmp_path / "b", fleet_pki.ca, fleet_pki.server_cert, fleet_pki.server_key, ["node-1"],
                   host_cert_path=fleet_pki.host.cert, port=squatter.getsockname()[1])
        with pytest.raises(BrokerError, match="Address already in use"):
            b.start()
