"""The fleet's certificate authority on disk: create it (`fieldnode ca init`), load it with its passphrase,
issue certificates with a record of each, and write the CRL from the inventory.

Every certificate the CA signs is recorded twice before anyone gets to use it: as
`<fleet>/ca/issued/<serial>.pem` (like OpenSSL's `newcerts`) and as a row of the inventory's
`certificates` table. The CRL (`<fleet>/ca/crl.pem`) is always rebuilt from the inventory, so any
command that writes it also enacts revocations an earlier, interrupted command recorded but did not
publish, and rotated-out certificates whose overlap has ended.

The CA key's passphrase never comes from the command line: a file (`--passphrase-file`), the
environment (`$FIELDNODE_CA_PASSPHRASE`), or a prompt when a terminal is attached.
"""
import datetime
import fcntl
import getpass
import ipaddress
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from . import pki
from .errors import FieldnodeError, UsageError
from .fleet import iso, utcnow
from .inventory import Inventory, serial_hex

PASSPHRASE_ENV = "FIELDNODE_CA_PASSPHRASE"
DEFAULT_SERVER_NAMES = ("localhost",)
DEFAULT_SERVER_IPS = ("127.0.0.1",)


class CAError(FieldnodeError):
    pass


def read_passphrase(path=None, prompt=False, confirm=False):
    """The CA passphrase as bytes, or None: from `path` (first line), else $FIELDNODE_CA_PASSPHRASE, else
    a terminal prompt when `prompt` and stdin is a tty."""
    if path:
        try:
            text = Path(path).read_bytes().splitlines()
        except OSError as exc:
            raise UsageError(f"--passphrase-file: cannot read {path} ({exc.strerror}): give a readable file") from None
        value = text[0] if text else b""
        if not value:
            raise UsageError(f"--passphrase-file: {path} is empty: put the passphrase on its first line")
        return value
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if prompt and sys.stdin.isatty():
        first = getpass.getpass("CA passphrase: ").encode()
        if confirm and getpass.getpass("again: ").encode() != first:
            raise UsageError("the two passphrases differ: run the command again")
        return first or None
    return None


def cert_info(cert, subject, kind, key_id=None):
    """The inventory's description of an issued certificate."""
    return {"serial": serial_hex(cert.serial_number), "subject": subject, "kind": kind,
            "fingerprint": pki.fingerprint(cert), "key_id": key_id,
            "not_before": iso(cert.not_valid_before_utc), "not_after": iso(cert.not_valid_after_utc),
            "issued_at": iso(utcnow())}


def record_issued(fleet, inventory, cert, subject, kind, key_id=None, status="pending"):
    """Record a certificate as issued (idempotent): ca/issued/<serial>.pem and the inventory."""
    fleet.issued_dir.mkdir(parents=True, exist_ok=True)
    path = fleet.issued_dir / (serial_hex(cert.serial_number) + ".pem")
    if not path.exists():
        pki.write_cert(path, cert)
    inventory.add_certificate(cert_info(cert, subject, kind, key_id), status)


class CA:
    """The loaded fleet CA (its key in memory)."""

    def __init__(self, fleet, key, cert):
        self.fleet = fleet
        self.key = key
        self.cert = cert

    @classmethod
    def load(cls, fleet, passphrase=None):
        fleet.require_ca()
        try:
            key = pki.load_key(fleet.ca_key, passphrase)
        except TypeError:
            if passphrase:  # a passphrase given for a key that has none
                key = pki.load_key(fleet.ca_key, None)
            else:
                raise CAError("the fleet CA key is passphrase-protected: set $%s or pass --passphrase-file FILE"
                              % PASSPHRASE_ENV) from None
        except ValueError:
            raise CAError("the CA passphrase is wrong (or %s is damaged): check $%s / --passphrase-file"
                          % (fleet.ca_key, PASSPHRASE_ENV)) from None
        return cls(fleet, key, pki.load_cert(fleet.ca_cert))

    def issue_node(self, node_id, days=pki.CLIENT_DAYS):
        """A device key and certificate (CN = node id). Not recorded yet: the caller persists the key
        material first (see provision.Pending), then calls record_issued."""
        return pki.issue_client_cert(self.key, self.cert, node_id, days)

    def write_crl(self, inventory, now=None):
        """Rebuild the CRL from the inventory and write it to <fleet>/ca/crl.pem; return (path, number,
        serials). CRL numbers only go up."""
        serials = inventory.crl_serials(now)
        number = int((now or utcnow()).timestamp())
        previous = current_crl_number(self.fleet)
        if previous is not None and number <= previous:
            number = previous + 1
        crl = pki.make_crl(self.key, self.cert, serials, number=number)
        pki.write_crl(self.fleet.crl, crl)
        return self.fleet.crl, number, serials


def current_crl_number(fleet):
    try:
        crl = pki.load_crl(fleet.crl)
    except FileNotFoundError:
        return None
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@contextmanager
def crl_lock(fleet):
    """One CRL writer at a time across processes (its content comes from the inventory)."""
    fleet.crl.parent.mkdir(parents=True, exist_ok=True)
    with open(fleet.crl.parent / ".crl.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def check_server_names(names, ips):
    for n in names:
        if not n or any(c in n for c in " /\n\r\t") or len(n) > 253:
            raise UsageError(f"--server-name: {n!r} is not a host name")
    for a in ips:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise UsageError(f"--server-ip: {a!r} is not an IP address") from None
    if not names and not ips:
        raise UsageError("the broker certificate needs at least one --server-name or --server-ip")


def init(fleet, passphrase=None, server_names=DEFAULT_SERVER_NAMES, server_ips=DEFAULT_SERVER_IPS, broker=None,
         ca_days=pki.CA_DAYS):
    """Create the fleet CA, the host's client certificate and the broker's server certificate.

    Refuses if the fleet already has a CA. Crash-safe: the host and broker files are written first and
    `ca/` appears last, in one rename of a fully written directory, so an interrupted init leaves no CA
    behind and can simply be run again."""
    server_names, server_ips = list(server_names), list(server_ips)
    check_server_names(server_names, server_ips)
    root = fleet.root
    if fleet.ca_cert.exists() or fleet.ca_key.exists():
        raise CAError(f"a fleet CA already exists in {root / 'ca'}: refusing to overwrite it "
                      "(use another --fleet DIR for a new fleet)")
    if (root / "ca").exists() and any((root / "ca").iterdir()):
        raise CAError(f"{root / 'ca'} exists but holds no CA: move it away, then run `fieldnode ca init` again")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = pki.make_ca(days=ca_days)
    host_key, host_cert = pki.make_host_cert()  # self-signed: the broker's host listener pins it
    server_key, server_cert = pki.issue_server_cert(ca_key, ca_cert, server_names, server_ips)

    for d in (fleet.host_cert.parent, fleet.server_cert.parent):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki.write_key(fleet.host_key, host_key)
    pki.write_cert(fleet.host_cert, host_cert)
    pki.write_key(fleet.server_key, server_key)
    pki.write_cert(fleet.server_cert, server_cert)

    stage = Path(tempfile.mkdtemp(dir=root, prefix=".ca-init-"))
    try:
        pki.write_key(stage / "ca.key", ca_key, passphrase=passphrase or None)
        pki.write_cert(stage / "ca.pem", ca_cert)
        pki.write_crl(stage / "crl.pem", pki.make_crl(ca_key, ca_cert, [], number=int(utcnow().timestamp())))
        (stage / "issued").mkdir()
        pki.write_cert(stage / "issued" / (serial_hex(server_cert.serial_number) + ".pem"), server_cert)
        if (root / "ca").exists():
            (root / "ca").rmdir()  # empty (checked above)
        os.rename(stage, root / "ca")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _fsync_dir(root)

    with Inventory(fleet.inventory_db) as inv:
        inv.add_certificate(cert_info(host_cert, pki.HOST_CN, "host"), "active")
        inv.add_certificate(cert_info(server_cert, server_names[0] if server_names else server_ips[0], "server"),
                            "active")
    server_name = server_names[0] if server_names else None
    if broker:
        fleet.save_broker(broker[0], broker[1], server_name=server_name if server_name != broker[0] else None)
    elif server_name:
        fleet.save_broker(server_name=server_name)
    return {"fleet": str(root), "ca_fingerprint": pki.fingerprint(ca_cert),
            "ca_not_after": iso(ca_cert.not_valid_after_utc), "host_fingerprint": pki.fingerprint(host_cert),
            "server_fingerprint": pki.fingerprint(server_cert), "server_names": server_names,
            "server_ips": server_ips, "passphrase_protected": bool(passphrase)}


def renew_host_cert(fleet):
    """Replace the host tools' certificate and key with a new self-signed pair (renewal; or a fleet made when
    the CA issued it, which the broker's host listener cannot pin). Earlier host certificates are marked
    revoked, so the next CRL carries a CA-issued one. Returns the new fingerprint and expiry. The broker
    pins the certificate: run `fieldnode broker-config` and restart mosquitto afterwards.

    Crash-safe: the pair is written and synced in a new directory that replaces `host/` by two renames. A
    run killed between them leaves the old pair in `.host-old`; the next run puts it back, then replaces it."""
    fleet.require_ca()
    host_dir = fleet.host_cert.parent
    old = fleet.root / ".host-old"
    with _host_lock(fleet):
        if old.exists() and not host_dir.exists():
            os.rename(old, host_dir)  # interrupted between the renames: the old pair is still the one in use
        shutil.rmtree(old, ignore_errors=True)
        for stale in fleet.root.glob(".host-new-*"):
            shutil.rmtree(stale, ignore_errors=True)
        key, cert = pki.make_host_cert()
        stage = Path(tempfile.mkdtemp(dir=fleet.root, prefix=".host-new-"))
        try:
            pki.write_key(stage / fleet.host_key.name, key)
            pki.write_cert(stage / fleet.host_cert.name, cert)
            _fsync_dir(stage)
            if host_dir.exists():
                os.rename(host_dir, old)
            os.rename(stage, host_dir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if old.exists() and not host_dir.exists():
                os.rename(old, host_dir)
            raise
        _fsync_dir(fleet.root)
        shutil.rmtree(old, ignore_errors=True)
        with Inventory(fleet.inventory_db) as inv:
            inv.replace_host_certificate(cert_info(cert, pki.HOST_CN, "host"))
    return {"host_fingerprint": pki.fingerprint(cert), "host_not_after": iso(cert.not_valid_after_utc)}


@contextmanager
def _host_lock(fleet):
    """One host certificate renewal at a time (its lock is named as no node's can be)."""
    fleet.locks_dir.mkdir(parents=True, exist_ok=True)
    with open(fleet.locks_dir / (pki.HOST_CN + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def host_cert_problem(fleet):
    """Why the broker's host listener cannot pin the host certificate, or None."""
    try:
        cert = pki.load_cert(fleet.host_cert)
    except (OSError, ValueError) as exc:
        return f"{fleet.host_cert}: unreadable ({exc})"
    if not pki.is_self_signed(cert):
        return (f"{fleet.host_cert} was issued by the fleet CA (a fleet made before the host listener): "
                "run `fieldnode ca host-cert` for a self-signed one the broker can pin")
    return None


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def days_left(not_after_iso, now=None):
    end = datetime.datetime.fromisoformat(not_after_iso)
    return (end - (now or utcnow())).days
