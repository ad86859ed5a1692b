"""HIL fixtures: a throw-away fleet PKI and a real mosquitto serving it.

    fleet_pki   CA, broker certificate, host client certificate (self-signed) and an empty CRL, under tmp_path
                (PEM; keys 0600); `.client(cn)` issues more client certificates, `.revoke(...)` a new CRL.
    broker      a started fieldnode.bench.broker.Broker for node-1..node-3, stopped (by pid) at teardown.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fieldnode import pki
from fieldnode.bench.broker import Broker

NODE_IDS = ("node-1", "node-2", "node-3")


@dataclass
class ClientFiles:
    cert: Path
    key: Path
    serial: int


def _issue_client(folder, ca_key, ca_cert, common_name):
    key, cert = pki.issue_client_cert(ca_key, ca_cert, common_name)
    folder.mkdir(mode=0o700, exist_ok=True)
    stem = "%s-%x" % (common_name, cert.serial_number)
    return ClientFiles(pki.write_cert(folder / (stem + ".pem"), cert),
                       pki.write_key(folder / (stem + ".key"), key), cert.serial_number)


def _host_files(folder):
    """The host tools' certificate: self-signed, pinned by the broker's host listener."""
    key, cert = pki.make_host_cert()
    folder.mkdir(mode=0o700, exist_ok=True)
    return ClientFiles(pki.write_cert(folder / "host.pem", cert), pki.write_key(folder / "host.key", key),
                       cert.serial_number)


@dataclass
class FleetPKI:
    root: Path
    ca_key: object = field(repr=False)
    ca_cert: object
    ca: Path
    server_cert: Path
    server_key: Path
    crl: Path
    host: ClientFiles

    @classmethod
    def create(cls, root):
        root.mkdir(mode=0o700)
        ca_key, ca_cert = pki.make_ca()
        server_key, server_cert = pki.issue_server_cert(ca_key, ca_cert)
        return cls(root, ca_key, ca_cert,
                   ca=pki.write_cert(root / "ca.pem", ca_cert),
                   server_cert=pki.write_cert(root / "server.pem", server_cert),
                   server_key=pki.write_key(root / "server.key", server_key),
                   crl=pki.write_crl(root / "crl.pem", pki.make_crl(ca_key, ca_cert, [])),
                   host=_host_files(root / "clients"))

    def client(self, common_name):
        """Issue and write a client certificate signed by this fleet's CA."""
        return _issue_client(self.root / "clients", self.ca_key, self.ca_cert, common_name)

    def revoke(self, *serials):
        """Write a CRL revoking exactly `serials` and return its path (for Broker.update_crl)."""
        path = self.root / ("crl-%d.pem" % len(list(self.root.glob("crl-*.pem"))))
        return pki.write_crl(path, pki.make_crl(self.ca_key, self.ca_cert, serials))


@pytest.fixture
def fleet_pki(tmp_path):
    return FleetPKI.create(tmp_path / "pki")


@pytest.fixture
def broker(fleet_pki, tmp_path):
    b = Broker(tmp_path / "broker", fleet_pki.ca, fleet_pki.server_cert, fleet_pki.server_key, NODE_IDS,
               host_cert_path=fleet_pki.host.cert, crl_path=fleet_pki.crl)
    b.start()
    try:
        yield b
    finally:
        pid = b.pid
        b.stop()
        assert not pid_exists(pid), "mosquitto (pid %d) still running after stop()" % pid


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

