"""The HIL rig: a throwaway fleet (CA, certificates, payload keys), a real mosquitto with mutual TLS,
the emulated sensor bus and N virtual nodes on the MicroPython Unix port — all on loopback.

Used by `fieldnode demo` and the HIL tests:

    with Rig(tmpdir, ["node-1", "node-2"], interval_s=0.5) as rig:
        with rig.monitor(on_message=...):
            rig.sensors["node-1"].set_environment(temperature_c=9.5)
"""
import os
import signal
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from .. import boards, nodeconfig, pki
from ..fleet import Fleet, KeyRing
from ..monitor import Monitor
from .bme280_emu import BME280Emulator
from .broker import LOOPBACK, Broker
from .i2cbus import I2CBusServer
from .vnode import VirtualNode, write_node_files

KEY_ID = 1


class Rig:
    def __init__(self, workdir, node_ids, interval_s=1.0, thresholds=None, environment=None, heapsize="512k",
                 autostart=None, broker_persistence=False, clock_file=False):
        self.workdir = Path(workdir)
        self.node_ids = list(node_ids)  # all of them get broker ACL entries
        self.autostart = self.node_ids if autostart is None else list(autostart)
        self.interval_s = interval_s
        self.thresholds = thresholds or {}
        self.environment = dict(environment or {})
        self.heapsize = heapsize
        self.broker_persistence = broker_persistence  # sessions and queued messages survive a broker restart
        self.clock_file = clock_file  # nodes boot with a `clock_offset` file of 0: their clocks can be stepped
        self.fleet = Fleet(self.workdir / "fleet")
        self.broker = None
        self.bus = None
        self.sensors = {}
        self.nodes = {}

    # -- set-up -----------------------------------------------------------------------------------------

    def _make_pki(self):
        f = self.fleet
        ca_key, self.ca_cert = pki.make_ca()
        self.ca_key = ca_key
        for p in (f.ca_cert, f.host_cert):
            p.parent.mkdir(parents=True, exist_ok=True)
        pki.write_cert(f.ca_cert, self.ca_cert)
        pki.write_key(f.ca_key, ca_key)
        host_key, host_cert = pki.make_host_cert()
        pki.write_cert(f.host_cert, host_cert)
        pki.write_key(f.host_key, host_key)
        server_dir = self.workdir / "server"
        server_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        server_key, server_cert = pki.issue_server_cert(ca_key, self.ca_cert)
        self.server_cert_path = pki.write_cert(server_dir / "server.pem", server_cert)
        self.server_key_path = pki.write_key(server_dir / "server.key", server_key)

    def add_node(self, node_id, start=True, issuer=None, broker_port=None, probe=False):
        """Provision a virtual node (certificate, payload key, config) and start it.

        `issuer` (ca_key, ca_cert) signs the node's certificate instead of the fleet CA (a rogue node);
        `broker_port` points the node somewhere else than the broker (e.g. through a proxy); `probe` runs
        it under the bench probe, which announces every sealed message on the console (vnode.PROBE)."""
        ca_key, ca_cert = issuer or (self.ca_key, self.ca_cert)
        key, cert = pki.issue_client_cert(ca_key, ca_cert, node_id)
        payload_key = os.urandom(32)
        self.fleet.save_payload_key(node_id, KEY_ID, payload_key)
        sensor = BME280Emulator(**self.environment)
        self.bus.bus(node_id).attach(0x76, sensor)
        self.sensors[node_id] = sensor
        cfg = nodeconfig.build(
            node_id, KEY_ID, "localhost", broker_port or self.broker.port, boards.load("unix"),
            interval_s=self.interval_s,
            thresholds=self.thresholds, bench={"i2c": "%s:%d" % self.bus.address, "bus": node_id})
        # the broker listens on 127.0.0.1 only; "localhost" is the name its certificate carries
        cfg["broker"]["host"] = LOOPBACK
        cfg["broker"]["server_name"] = "localhost"
        nodeconfig.validate(cfg)
        folder = self.workdir / "nodes" / node_id
        write_node_files(folder, cfg, self.ca_cert.public_bytes(Encoding.DER), cert.public_bytes(Encoding.DER),
                         pki.key_bytes(key, "der"), payload_key)
        if self.clock_file:  # the Unix HAL looks for it once, at boot (firmware/node/hal/unix.py)
            (folder / "clock_offset").write_text("0\n")
        node = VirtualNode(node_id, folder, heapsize=self.heapsize, probe=probe)
        self.nodes[node_id] = node
        if start:
            node.start()
        return node

    def start(self):
        try:
            self._make_pki()
            self.broker = Broker(self.workdir / "broker", self.fleet.ca_cert, self.server_cert_path,
                                 self.server_key_path, self.node_ids, host_cert_path=self.fleet.host_cert,
                                 persistence=self.broker_persistence).start()
            self.fleet.save_broker(LOOPBACK, self.broker.port, host_port=self.broker.host_port)
            self.bus = I2CBusServer().start()
            for node_id in self.autostart:
                self.add_node(node_id)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_broker(self, kill=False):
        """Take the broker down (SIGTERM, by pid; `kill`: SIGKILL, a crash that saves nothing);
        start_broker() brings it back on the same port."""
        if kill and self.broker.running:
            os.kill(self.broker.pid, signal.SIGKILL)
        self.broker.stop()

    def start_broker(self):
        """Start the broker again on the ports it had, so nodes and subscribers reconnect to where they were."""
        self.broker = Broker(self.workdir / "broker", self.fleet.ca_cert, self.server_cert_path,
                             self.server_key_path, self.node_ids, host_cert_path=self.fleet.host_cert,
                             port=self.broker.port, host_port=self.broker.host_port,
                             persistence=self.broker_persistence).start()
        return self.broker

    def monitor(self, **callbacks):
        """A verifying subscriber with the host certificate (start it with `with` or .start())."""
        f = self.fleet
        return Monitor(LOOPBACK, self.broker.host_port, f.ca_cert, f.host_cert, f.host_key, KeyRing(f),
                       **callbacks)

    def stop(self):
        for node in self.nodes.values():
            node.stop()
        if self.bus is not None:
            self.bus.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
