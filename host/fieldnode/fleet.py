"""The fleet directory: all host state in one place (CA, host certificate, payload keys, broker address).

Resolved from --fleet DIR, else $FIELDNODE_FLEET, else a per-user default. Secret files are 0600.
"""
import json
import os
from pathlib import Path

from . import pki
from .errors import FieldnodeError


def default_dir():
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "fieldnode" / "fleet"


def resolve(path=None):
    return Path(path or os.environ.get("FIELDNODE_FLEET") or default_dir())


def write_secret(path, data):
    """Write bytes to a 0600 file atomically (never half-written, never briefly world-readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return pki.atomic_write(path, data, mode=0o600)


class Fleet:
    def __init__(self, root):
        self.root = Path(root)

    ca_cert = property(lambda self: self.root / "ca" / "ca.pem")
    ca_key = property(lambda self: self.root / "ca" / "ca.key")
    host_cert = property(lambda self: self.root / "host" / "host.pem")
    host_key = property(lambda self: self.root / "host" / "host.key")
    keys_dir = property(lambda self: self.root / "keys")
    broker_file = property(lambda self: self.root / "broker.json")

    def require(self, *paths):
        for p in paths:
            if not p.exists():
                raise FieldnodeError(f"{p} not found: is {self.root} a fleet directory? "
                                     "(create one with `fieldnode ca init` or pass --fleet DIR)")

    def save_payload_key(self, node_id, key_id, key):
        path = self.keys_dir / f"{node_id}.json"
        keys = self._read_keys(path) if path.exists() else {}
        keys[str(key_id)] = key.hex()
        write_secret(path, json.dumps(keys, sort_keys=True).encode())

    def _read_keys(self, path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FieldnodeError(f"{path}: unreadable payload keys ({exc}): restore it from backup") from None

    def payload_keys(self):
        """{node_id: {key_id: master_key}} for every node in the fleet."""
        out = {}
        if self.keys_dir.is_dir():
            for path in sorted(self.keys_dir.glob("*.json")):
                out[path.stem] = {int(k): bytes.fromhex(v) for k, v in self._read_keys(path).items()}
        return out

    def broker(self):
        """(host, port) of the fleet's broker as last recorded."""
        self.require(self.broker_file)
        data = json.loads(self.broker_file.read_text())
        return data["host"], int(data["port"])

    def save_broker(self, host, port):
        self.broker_file.parent.mkdir(parents=True, exist_ok=True)
        self.broker_file.write_text(json.dumps({"host": host, "port": port}))


class KeyRing:
    """Payload keys by node id, read from the fleet directory and re-read when a node is not known yet
    (a node provisioned while a monitor runs). A mapping-like `get(node_id, default)`."""

    def __init__(self, fleet):
        self._fleet = fleet
        self._keys = fleet.payload_keys()

    def get(self, node_id, default=None):
        if node_id not in self._keys:
            self._keys = self._fleet.payload_keys()
        return self._keys.get(node_id, default)
