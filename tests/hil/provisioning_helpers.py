"""For the provisioning HIL tests: mosquitto run from the directory `fieldnode broker-config` wrote, the
`fieldnode` CLI as a subprocess (its output kept, to look for secrets in it), and MQTT clients holding a
node's own credentials as they sit on its board. Every wait is bounded and on a condition."""
import os
import queue
from contextlib import contextmanager
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          load_der_private_key)
from cryptography import x509

from fieldnode.bench.broker import LOOPBACK, mosquitto_exe

TIMEOUT = 30.0
_POLL = 0.02


def fieldnode_exe():
    exe = Path(sys.executable).with_name("fieldnode")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fieldnode.cli"]


class CLI:
    """Runs `fieldnode ...` for a fleet; keeps every stdout/stderr it saw in `.transcript`."""

    def __init__(self, fleet_dir):
        self.fleet_dir = str(fleet_dir)
        self.transcript = []

    def env(self):
        env = dict(os.environ, FIELDNODE_FLEET=self.fleet_dir)
        env.pop("FIELDNODE_CA_PASSPHRASE", None)
        return env

    def __call__(self, *args, code=0, timeout=120):
        proc = subprocess.run(fieldnode_exe() + [str(a) for a in args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        self.transcript.append(proc.stdout + proc.stderr)
        assert proc.returncode == code, "fieldnode %s: exit %d\n%s%s" % (
            " ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr)
        return proc

    def popen(self, *args):
        return subprocess.Popen(fieldnode_exe() + [str(a) for a in args], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


class Mosquitto:
    """mosquitto -c DIR/mosquitto.conf as `fieldnode broker-config --log-file LOG` wrote it."""

    def __init__(self, conf, log):
        self.conf, self.log = Path(conf), Path(log)
        self.proc = None
        self._offset = 0

    def log_text(self, since_start=True):
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset if since_start else 0)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self):
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([mosquitto_exe(), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.wait_log(r"mosquitto version \S+ running", "mosquitto to start")
        return self

    def wait_log(self, pattern, what, timeout=TIMEOUT, count=1):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while len(rx.findall(self.log_text())) < count:
            if self.proc.poll() is not None:
                raise AssertionError("mosquitto exited (%s): %s\n%s" % (self.proc.returncode,
                                     self.proc.stderr.read().decode(errors="replace"), self.log_text()[-3000:]))
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s; broker log:\n%s" % (what, self.log_text()[-3000:]))
            time.sleep(_POLL)

    def reload(self):
        before = self.log_text().count("Reloading config.")
        os.kill(self.proc.pid, signal.SIGHUP)
        self.wait_log("Reloading config.", "the reload", count=before + 1)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stderr.close()


def pem_credentials(board_fs, cfg, out_dir):
    """The node's certificate and key as its board holds them (DER), as PEM files for Python's ssl."""
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fs = Path(board_fs)
    cert = x509.load_der_x509_certificate((fs / cfg["files"]["cert"]).read_bytes())
    key = load_der_private_key((fs / cfg["files"]["key"]).read_bytes(), None)
    cert_path, key_path = out_dir / "node.pem", out_dir / "node.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path


class Client:
    """A paho 2.x client over mutual TLS in its own network thread; bounded waits."""

    def __init__(self, port, ca, cert, key, client_id):
        self.port = port
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages = queue.Queue()
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.mqtt.tls_set_context(ctx)
        self.mqtt.on_connect = lambda c, u, f, rc, p: rc.is_failure or self.connected.set()
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.mqtt.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))

    def connect(self):
        self.mqtt.connect(LOOPBACK, self.port, keepalive=30)
        self.mqtt.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK within %ss" % TIMEOUT
        return self

    def subscribe(self, topic):
        self.mqtt.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic, payload):
        info = self.mqtt.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "no PUBACK for %s" % topic

    def receive_until(self, marker):
        got = []
        while not got or got[-1][1] != marker:
            got.append(self.messages.get(timeout=TIMEOUT))
        return got

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def copy_fleet(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


class Console:
    """A board's serial console read continuously in a thread (opened without taking the port
    exclusively), so that output can be told apart by when it came: `mark()`, then `wait_for(pattern,
    since=mark)`."""

    def __init__(self, port):
        import serial

        self._serial = serial.Serial(port, 115200, timeout=0.2)
        self._text = ""
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _pump(self):
        while not self._stop:
            try:
                data = self._serial.read(4096)
            except Exception:  # the port went away: the test's wait reports what it had
                return
            if data:
                with self._cond:
                    self._text += data.decode(errors="replace").replace("\r\n", "\n")
                    self._cond.notify_all()

    def mark(self):
        with self._cond:
            return len(self._text)

    def wait_for(self, pattern, since=0, timeout=TIMEOUT):
        rx = re.compile(pattern, re.M)
        with self._cond:
            if not self._cond.wait_for(lambda: rx.search(self._text, since), timeout):
                raise AssertionError("no console line matching %r; console since the mark:\n%s"
                                     % (pattern, self._text[since:][-2000:]))
            return rx.search(self._text, since).group(0)

    def stop(self):
        self._stop = True
        self._thread.join(5)
        self._serial.close()


def _children(pid):
    """The pids whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/status" % entry) as f:
                    if any(line.split() == ["PPid:", str(pid)] for line in f):
                        found.append(int(entry))
            except OSError:
                pass  # gone meanwhile
    return found


@contextmanager
def frozen(vb):
    """The virtual board's interpreter stopped (SIGSTOP) while the block runs, then let go: the board as if
    unplugged while its credentials are used elsewhere. The broker gives a node's certificate no client id
    but the node's own, so the running node and such a client would keep taking the one session from each
    other. Let go, the node finds its connection gone and connects again."""
    pids = _children(vb.pid)
    assert pids, "the virtual board %s runs no interpreter" % vb.port
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def start_vboards(folders, attempts=3):
    """`fieldnode vboard` processes, started together, each answering its REPL. A first contact while a
    virtual board is still starting its interpreter goes unanswered now and then (about 1 in 15 on this
    bench; the next one is answered): each board is probed until it answers, at most `attempts` times,
    so the tests start from boards that are up, like a technician's plugged-in board."""
    from fieldnode.bench.vboard import VBoardProcess
    from fieldnode.board import Board, BoardError

    started = []
    try:
        for fs in folders:
            started.append(VBoardProcess(fs).start())
        for vb in started:
            for attempt in range(attempts):
                try:
                    with Board(vb.port, timeout=3) as board:
                        board.info()
                    break
                except BoardError:
                    if attempt == attempts - 1:
                        raise
    except BaseException:
        for vb in started:
            vb.stop()
        raise
    return started
