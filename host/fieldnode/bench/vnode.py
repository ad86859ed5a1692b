"""A virtual node: the firmware tree on the MicroPython Unix port, in its own folder as its filesystem.

The node's folder holds what a provisioned board's flash holds (config.json, TLS files, payload key,
counters); the emulated sensor is reached over the bench's I2C bridge named in config.json's `bench`.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from .. import paths
from ..fleet import write_secret


class NodeProcessError(Exception):
    pass


def write_node_files(folder, config, ca_der, cert_der, key_der, payload_key):
    """Lay out a node's filesystem as provisioning would: config, TLS material (DER), payload key."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = config["files"]
    (folder / files["ca"]).write_bytes(ca_der)
    (folder / files["cert"]).write_bytes(cert_der)
    write_secret(folder / files["key"], key_der)
    write_secret(folder / files["payload_key"], payload_key)
    (folder / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))


# Runs the board's main.py with every sealed message announced on the console (see mpy/probe.py).
PROBE = Path(__file__).resolve().parent / "mpy" / "probe.py"


class VirtualNode:
    """One node process. Console lines are collected so tests can wait on them (bounded); `line_times`
    holds when each arrived (time.monotonic()). `probe=True` runs the firmware under the bench probe."""

    def __init__(self, node_id, folder, heapsize="512k", probe=False):
        self.node_id = node_id
        self.folder = Path(folder)
        self.heapsize = heapsize
        self.probe = probe
        self.micropypath = None  # None: fieldnode.paths.micropypath(); tests swap libraries through it
        self.proc = None
        self.lines = []
        self.line_times = []
        self._cond = threading.Condition()

    def start(self):
        env = dict(os.environ, MICROPYPATH=self.micropypath or paths.micropypath())
        main = [str(PROBE), str(paths.FIRMWARE / "main.py")] if self.probe else [str(paths.FIRMWARE / "main.py")]
        self.proc = subprocess.Popen(
            [paths.micropython_exe(), "-X", "heapsize=" + self.heapsize] + main,
            cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace")
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc):
        try:
            for line in proc.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self.line_times.append(time.monotonic())
                    self._cond.notify_all()
        except (ValueError, OSError):
            pass  # stop() closed the pipe while we were reading it: the process is gone
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern, timeout=20.0, start=0):
        """Wait until a console line (from index `start`) matches; return the match. Bounded."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise NodeProcessError(f"{self.node_id}: no console line matching {pattern!r} "
                                           f"(exit code {self.proc.poll()}); last lines:\n"
                                           + "\n".join(self.lines[-15:]))
                self._cond.wait(min(left, 0.5))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """Power loss: SIGKILL, no chance to flush or say goodbye."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout=5):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
