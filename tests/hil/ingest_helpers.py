"""Shared by the ingest and security HIL tests: an Ingestor on a Rig with its events collected, a client
holding a node's own credentials (what an attacker with a stolen node has), and a CLI process whose output
lines can be waited for. Every wait is bounded and on a condition, never a sleep."""
import os
import queue
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.serialization import load_der_private_key

from fieldnode import pki
from fieldnode.bench.broker import LOOPBACK
from fieldnode.fleet import KeyRing
from fieldnode.ingest import IngestStore, Ingestor

TIMEOUT = 20.0


class Events:
    """Ingestor events, with a bounded wait on a condition over them."""

    def __init__(self):
        self.items = []
        self._cond = threading.Condition()

    def __call__(self, event):
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
            return predicate(self)

    def of(self, kind, node=None):
        with self._cond:
            return [e for e in self.items if e.kind == kind and (node is None or e.node == node)]

    def stored_seqs(self, node):
        return {e.opened.seq for e in self.of("stored", node)}

    def committed_up_to(self, node):
        """The highest seq of `node` this ingest has committed (stored now, or found already stored)."""
        return max((e.opened.seq for e in self.of("stored", node) + self.of("duplicate", node)), default=0)


@contextmanager
def running_ingest(rig, db_path, client_id=None, **store_kw):
    """(ingestor, store, events): an Ingestor with the rig's host certificate on a persistent session."""
    f = rig.fleet
    store = IngestStore(db_path, **store_kw)
    events = Events()
    ingestor = Ingestor(store, LOOPBACK, rig.broker.host_port, f.ca_cert, f.host_cert, f.host_key, KeyRing(f),
                        client_id=client_id or "fieldnode-test-" + secrets.token_hex(4), on_event=events)
    try:
        with ingestor:
            yield ingestor, store, events
        assert ingestor.error is None, ingestor.error
    finally:
        store.close()


def node_credentials(rig, node_id):
    """PEM copies of a provisioned node's certificate and key (the node keeps DER on its flash)."""
    folder = rig.nodes[node_id].folder
    key = load_der_private_key((folder / "node.key.der").read_bytes(), None)
    pem_key = pki.write_key(folder.parent / ("%s-key.pem" % node_id), key)
    pem_cert = folder.parent / ("%s-cert.pem" % node_id)
    pem_cert.write_bytes(ssl.DER_cert_to_PEM_cert((folder / "node.der").read_bytes()).encode())
    return pem_cert, pem_key


class Client:
    """A paho client over mutual TLS with any certificate; publish waits for the PUBACK, receive for a message."""

    def __init__(self, port, ca, cert, key, client_id):
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self._connected = threading.Event()
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.mqtt.tls_set_context(ctx)
        self.mqtt.on_connect = lambda c, u, f, rc, p: rc.is_failure or self._connected.set()
        self.mqtt.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        self.mqtt.connect(LOOPBACK, port, keepalive=30)
        self.mqtt.loop_start()
        if not self._connected.wait(TIMEOUT):
            self.close()
            raise TimeoutError("no CONNACK within %ss" % TIMEOUT)

    def publish(self, topic, payload, retain=False):
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "no PUBACK for %s" % topic

    def subscribe(self, *topics):
        self.mqtt.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=TIMEOUT)

    def receive_until(self, marker):
        got = []
        while not got or got[-1][1] != marker:
            got.append(self.messages.get(timeout=TIMEOUT))
        return got

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@contextmanager
def stolen(rig, node_id):
    """The node is off (its board was taken) while the block runs, and powered up again after it. The broker
    gives a node's certificate no client id but the node's own, so the real node and a client holding its
    credentials would keep taking the one session from each other."""
    node = rig.nodes[node_id]
    was_running = node.running
    node.stop()
    try:
        yield
    finally:
        if was_running:
            node.start()


@contextmanager
def as_node(rig, node_id, client_id=None):
    """A client holding node_id's own credentials (the node itself is off meanwhile: see stolen)."""
    cert, key = node_credentials(rig, node_id)
    with stolen(rig, node_id):
        c = Client(rig.broker.port, rig.fleet.ca_cert, cert, key, client_id or node_id + "-attacker")
        try:
            yield c
        finally:
            c.close()


class CliProcess:
    """`fieldnode ARGS` in the background; stdout lines collected; stopped by pid."""

    def __init__(self, *args, env=None):
        exe = Path(sys.executable).with_name("fieldnode")
        self.proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env or dict(os.environ))
        self.lines = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._pump_err, daemon=True)
        self._err.start()

    def _pump(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _pump_err(self):
        self.stderr = self.proc.stderr.read()

    def wait_for_lines(self, predicate, what, timeout=TIMEOUT):
        """Wait until predicate(lines) is truthy; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._out.is_alive():
                    raise TimeoutError("waiting for %s; exit code %s, stderr:\n%s"
                                       % (what, self.proc.poll(), self.stderr[-2000:]))
                self._cond.wait(min(left, 0.5))
            return predicate(self.lines)

    def kill(self):
        """A crash: SIGKILL, no chance to commit or say goodbye."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def terminate(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.wait()

    def wait(self, timeout=TIMEOUT):
        code = self.proc.wait(timeout)
        self._out.join(timeout)
        self._err.join(timeout)
        return code
