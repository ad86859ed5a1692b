"""Host ingest throughput: verified + decrypted + stored messages per second on one core, next to a bare paho-mqtt
subscriber that only counts the same messages.

    ingest_figures(workdir, messages=20000, rounds=5)   # {"ingest_msgs_per_s": ..., "ingest_ratio": ..., ...}

The set-up: a rig's mosquitto (the production config: mTLS, ACL, at most 20 QoS 1 messages in flight to a
client) and `nodes` node identities, each with its certificate and payload key. Readings are
sealed beforehand (fieldnode.protocol.seal, sequence numbers 1.. per node) and published at QoS 1 by a
loopback publisher with the nodes' own certificates (raw TLS sockets, whole batches per write), so the stream
is what a fleet sends. Each subscriber runs in a process of its own pinned to CPU 0; the publisher and
mosquitto share CPU 1:

- ingest: fieldnode.ingest.Ingestor feeding an IngestStore (a fresh SQLite file per round, default
  synchronous=FULL): persistent session, PUBACK after the commit. Counted: messages reported stored.
- bare: a paho-mqtt client subscribed at QoS 1 (acknowledging as paho does, right away) that counts.

Rounds alternate bare, ingest, bare, ... over the very same messages; a round's rate is messages / time from
the first message's arrival to the last one counted. The publisher keeps at most `window` messages ahead of
what the subscriber reported (it prints its count every 100 messages), below any per-client queue limit the
broker may have, so nothing is dropped and the subscriber never waits for input.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import pki, protocol
from ..errors import FieldnodeError
from .broker import LOOPBACK
from .perf_wire import publish_packet
from .rig import KEY_ID, Rig

PROGRESS_EVERY = 100
SUB_CPU, PUB_CPU = 0, 1


def _connect_packet(client_id):
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id.encode()
    return bytes((0x10, len(body))) + body


class Publisher:
    """Node identities publishing pre-sealed readings at QoS 1 over raw TLS sockets (PUBACKs read and dropped)."""

    def __init__(self, rig, node_ids, files):
        self.rig = rig
        self.node_ids = node_ids
        self.files = files  # node -> (cert path, key path)
        self.socks = {}
        self._readers = []

    def connect(self):
        f = self.rig.fleet
        for node in self.node_ids:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(f.ca_cert))
            ctx.load_cert_chain(*[str(p) for p in self.files[node]])
            raw = socket.create_connection((LOOPBACK, self.rig.broker.port), timeout=10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(_connect_packet(node))
            ack = s.recv(4)
            if len(ack) != 4 or ack[0] != 0x20 or ack[3] != 0:
                raise FieldnodeError("perf publisher %s: no CONNACK (%r)" % (node, ack))
            self.socks[node] = s
            t = threading.Thread(target=self._drain, args=(s,), daemon=True)
            t.start()
            self._readers.append(t)
        return self

    @staticmethod
    def _drain(s):
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass

    def send(self, batches):
        """batches: [(node, bytes of whole PUBLISH packets)] sent in order."""
        for node, data in batches:
            self.socks[node].sendall(data)

    def close(self):
        for s in self.socks.values():
            try:
                s.sendall(b"\xe0\x00")
                s.close()
            except OSError:
                pass
        self.socks = {}


def make_stream(node_ids, keys, per_node, batch=25):
    """Batches of PUBLISH packets: `per_node` sealed readings per node, seq 1.., nodes interleaved in runs of
    `batch` messages. Returns (batches as [(node, bytes, count)], total messages)."""
    t0 = 1767225600
    out = []
    for start in range(0, per_node, batch):
        for node in node_ids:
            data = bytearray()
            n = 0
            for seq in range(start + 1, min(start + batch, per_node) + 1):
                msg = protocol.seal(keys[node], node, KEY_ID, 1, seq,
                                    protocol.Reading(t0 + seq, 2, 21.0 + seq % 50 / 10, 45.0, 101325.0))
                data += publish_packet("fieldnode/%s/reading" % node, msg, qos=1, packet_id=seq % 65535 + 1)
                n += 1
            out.append((node, bytes(data), n))
    return out, per_node * len(node_ids)


class _Progress:
    """The subscriber process's stdout: its last reported count, and its final line."""

    def __init__(self, proc):
        self.proc = proc
        self.count = 0
        self.ready = threading.Event()
        self.result = None
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            word, _, rest = line.strip().partition(" ")
            if word == "progress":
                self.count = int(rest)
            elif word == "ready":
                self.ready.set()
            elif word == "result":
                self.result = json.loads(rest)
        self.ready.set()


def _affinity():
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def _pin(pid, cpu):
    try:
        if os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):
        pass


def run_round(rig, kind, spec_path, publisher, batches, total, window, timeout):
    cmd = [sys.executable, "-m", "fieldnode.bench.perf_ingest", kind, str(spec_path), str(total)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = _Progress(proc)
    try:
        if not progress.ready.wait(30) or proc.poll() is not None:
            raise FieldnodeError("perf %s subscriber did not start: %s" % (kind, proc.stderr.read()[-500:]))
        deadline = time.monotonic() + timeout
        sent = 0
        for node, data, n in batches:
            while sent + n - progress.count > window:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise FieldnodeError("perf %s subscriber stalled at %d of %d" % (kind, progress.count, total))
                time.sleep(0.001)
            publisher.send([(node, data)])
            sent += n
        proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise FieldnodeError("perf %s subscriber did not finish: %d of %d" % (kind, progress.count, total)) from None
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    deadline = time.monotonic() + 5
    while progress.result is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if progress.result is None:
        raise FieldnodeError("perf %s subscriber failed: %s" % (kind, proc.stderr.read()[-800:]))
    return progress.result


def ingest_figures(workdir, messages=20000, rounds=5, nodes=20, window=600, log=None):
    workdir = Path(workdir)
    node_ids = ["ing-%03d" % i for i in range(nodes)]
    per_node = max(1, messages // nodes)
    rig = Rig(workdir / "rig", node_ids, autostart=[]).start()
    publisher = None
    cpus = _affinity()
    try:
        _pin(os.getpid(), PUB_CPU)
        _pin(rig.broker.pid, PUB_CPU)
        keys, files = {}, {}
        cdir = workdir / "clients"
        cdir.mkdir(parents=True, exist_ok=True)
        for node in node_ids:
            key, cert = pki.issue_client_cert(rig.ca_key, rig.ca_cert, node)
            files[node] = (pki.write_cert(cdir / (node + ".pem"), cert), pki.write_key(cdir / (node + ".key"), key))
            keys[node] = os.urandom(32)
        f = rig.fleet
        for node, key in keys.items():  # the ingest side looks them up as `fieldnode ingest` does
            f.save_payload_key(node, KEY_ID, key)
        spec = {"port": rig.broker.host_port, "ca": str(f.ca_cert), "cert": str(f.host_cert), "key": str(f.host_key),
                "fleet": str(f.root), "workdir": str(workdir), "cpu": SUB_CPU}
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        batches, total = make_stream(node_ids, keys, per_node)
        publisher = Publisher(rig, node_ids, files).connect()
        results = {"bare": [], "ingest": []}
        for r in range(rounds):
            for kind in ("bare", "ingest"):
                res = run_round(rig, kind, spec_path, publisher, batches, total, window, timeout=120)
                results[kind].append(res)
                if log:
                    log("  round %d %-6s %7.0f msg/s (%d messages in %.2fs, subscriber CPU busy %s)" % (
                        r + 1, kind, res["rate"], res["count"], res["elapsed_s"], res["cpu_busy"]))
        ratios = [i["rate"] / b["rate"] for b, i in zip(results["bare"], results["ingest"])]
        return {"ingest_msgs_per_s": round(statistics.median(r["rate"] for r in results["ingest"])),
                "bare_msgs_per_s": round(statistics.median(r["rate"] for r in results["bare"])),
                "ingest_ratio": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
                "messages": total, "nodes": nodes, "rounds": rounds,
                "ingest_rejected": sum(r.get("rejected", 0) for r in results["ingest"]),
                "cpu_busy": {k: [r["cpu_busy"] for r in v] for k, v in results.items()},
                "context_switches_per_msg": {k: [r["context_switches_per_msg"] for r in v]
                                             for k, v in results.items()}}
    finally:
        if publisher is not None:
            publisher.close()
        rig.stop()
        if cpus:  # this process (and what it starts next) gets every CPU back
            os.sched_setaffinity(0, cpus)


# -- the subscriber processes ------------------------------------------------------------------------------

def _context_switches():
    """This process's context switches so far, all threads (Linux), or None."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/status" % task) as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary and nonvoluntary
                        total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total


class _Counter:
    def __init__(self, total):
        self.total = total
        self.count = 0
        self.first = None
        self.last = None
        self.cpu_first = self.cpu_last = 0.0
        self.switches_first = self.switches_last = None
        self.done = threading.Event()

    def hit(self, n=1):
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.cpu_first = time.process_time()
            self.switches_first = _context_switches()
        self.count += n
        if self.count // PROGRESS_EVERY != (self.count - n) // PROGRESS_EVERY:
            print("progress", self.count, flush=True)
        if self.count >= self.total:
            self.last = now
            self.cpu_last = time.process_time()
            self.switches_last = _context_switches()
            self.done.set()

    def result(self, **extra):
        elapsed = (self.last or time.monotonic()) - (self.first or time.monotonic())
        rate = (self.count - 1) / elapsed if elapsed > 0 else 0.0
        busy = (self.cpu_last - self.cpu_first) / elapsed if elapsed > 0 and self.last else None
        switches = None
        if self.last and self.switches_first is not None and self.switches_last is not None:
            switches = round((self.switches_last - self.switches_first) / max(1, self.count - 1), 3)
        return dict({"count": self.count, "elapsed_s": round(elapsed, 4), "rate": rate,
                     "cpu_busy": None if busy is None else round(busy, 2),
                     "context_switches_per_msg": switches}, **extra)


def _bare(spec, total):
    import paho.mqtt.client as mqtt

    counter = _Counter(total)
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fieldnode-perf-bare-%d" % os.getpid(),
                         clean_session=True, protocol=mqtt.MQTTv311)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=spec["ca"])
    ctx.load_cert_chain(spec["cert"], spec["key"])
    client.tls_set_context(ctx)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("fieldnode/#", 1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: counter.hit()
    client.connect(LOOPBACK, spec["port"], keepalive=30)
    client.loop_start()
    if not subscribed.wait(15):
        raise SystemExit("bare subscriber: no SUBACK")
    print("ready", flush=True)
    counter.done.wait(100)
    client.disconnect()
    client.loop_stop()
    return counter.result()


def _ingest(spec, total):
    from ..fleet import Fleet, KeyRing
    from ..ingest import Ingestor, IngestStore

    keys = KeyRing(Fleet(spec["fleet"]))
    counter = _Counter(total)
    kinds = {}

    def on_event(event):
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
        if event.kind == "stored":
            counter.hit()

    db = Path(spec["workdir"]) / ("ingest-%d.sqlite" % os.getpid())
    store = IngestStore(db, keys=keys)
    ing = Ingestor(store, LOOPBACK, spec["port"], spec["ca"], spec["cert"], spec["key"], keys,
                   client_id="fieldnode-perf-ingest-%d" % os.getpid(), on_event=on_event)
    ing.start()
    print("ready", flush=True)
    counter.done.wait(100)
    ing.stop()
    stats = store.stats()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return counter.result(stored=stats["stored"], rejected=stats["rejected"], gaps=stats["missing"], events=kinds)


def _main(argv):
    kind, spec_path, total = argv[0], argv[1], int(argv[2])
    spec = json.loads(Path(spec_path).read_text())
    _pin(0, spec.get("cpu", SUB_CPU))
    result = _bare(spec, total) if kind == "bare" else _ingest(spec, total)
    print("result", json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
