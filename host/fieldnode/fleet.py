"""The fleet directory: all host state in one place. Resolved from --fleet DIR, else $FIELDNODE_FLEET, else
a per-user default. Secret files are 0600, written atomically.

```
<fleet>/
  ca/ca.pem ca/ca.key          the fleet CA (the key optionally passphrase-protected)
  ca/crl.pem                   the current CRL (fieldnode revoke / rotate / broker-config rewrite it)
  ca/issued/<serial>.pem       every certificate the CA ever signed (one file each, never removed)
  host/host.pem host/host.key  the host tools' client certificate (CN fieldnode-host)
  broker/server.pem .key       the broker's server certificate
  keys/<node>.json             the node's payload master keys by key id (0600), with their state
  pending/<node>/              key material issued but not yet committed (a provisioning in progress)
  locks/<node>.lock            one fieldnode process at a time per node (flock)
  inventory.sqlite             the inventory (fieldnode.inventory)
  audit.log audit.head         the audit trail (fieldnode.audit)
  broker.json                  where nodes reach the broker {"host", "port", "server_name"?}, the host
                               tools' listener port {"host_port"} and the last broker-config DIR
```

Payload keys file (`keys/<node>.json`): `{"<key_id>": {"key": hex, "created": iso, "not_after": iso|null,
"revoked": iso|null}}`. A key is *accepted* (KeyRing, payload_keys()) while it is not revoked and
`not_after` is unset or in the future; revoked and expired keys stay in the file so historical messages
can still be opened deliberately (`payload_keys(include_inactive=True)`). The older form
`{"<key_id>": hex}` reads as an accepted key without expiry.
"""
import datetime
import json
import os
import time
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
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return pki.atomic_write(path, data, mode=0o600)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(when):
    return None if when is None else when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


def parse_iso(text):
    return None if text is None else datetime.datetime.fromisoformat(text)


def _accepted(record, now):
    if record.get("revoked"):
        return False
    not_after = record.get("not_after")
    return not_after is None or now < parse_iso(not_after)


class Fleet:
    def __init__(self, root):
        self.root = Path(root)

    ca_cert = property(lambda self: self.root / "ca" / "ca.pem")
    ca_key = property(lambda self: self.root / "ca" / "ca.key")
    crl = property(lambda self: self.root / "ca" / "crl.pem")
    issued_dir = property(lambda self: self.root / "ca" / "issued")
    host_cert = property(lambda self: self.root / "host" / "host.pem")
    host_key = property(lambda self: self.root / "host" / "host.key")
    server_cert = property(lambda self: self.root / "broker" / "server.pem")
    server_key = property(lambda self: self.root / "broker" / "server.key")
    keys_dir = property(lambda self: self.root / "keys")
    pending_dir = property(lambda self: self.root / "pending")
    locks_dir = property(lambda self: self.root / "locks")
    inventory_db = property(lambda self: self.root / "inventory.sqlite")
    broker_file = property(lambda self: self.root / "broker.json")

    def require(self, *paths):
        for p in paths:
            if not p.exists() and p.parent == self.host_cert.parent and (self.root / ".host-old").is_dir():
                raise FieldnodeError(f"{p} not found: `fieldnode ca host-cert` was interrupted; run it again")
            if not p.exists():
                raise FieldnodeError(f"{p} not found: is {self.root} a fleet directory? "
                                     "(create one with `fieldnode ca init` or pass --fleet DIR)")

    def require_ca(self):
        """Raise the technician's one-liner when this fleet has no CA yet."""
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            raise FieldnodeError(f"no fleet CA in {self.root}: run `fieldnode ca init` first "
                                 "(or point --fleet / $FIELDNODE_FLEET at the fleet directory)")

    # -- payload keys ---------------------------------------------------------------------------------

    def key_file(self, node_id):
        return self.keys_dir / f"{pki.check_node_id(node_id)}.json"

    def _read_keys(self, path):
        try:
            raw = json.loads(path.read_text())
            out = {}
            for key_id, rec in raw.items():
                if isinstance(rec, str):
                    rec = {"key": rec, "created": None, "not_after": None, "revoked": None}
                out[int(key_id)] = dict(rec)
            return out
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise FieldnodeError(f"{path}: unreadable payload keys ({exc}): restore it from backup") from None

    def key_records(self, node_id):
        """{key_id: {"key": hex, "created", "not_after", "revoked"}} for one node ({} if none)."""
        path = self.key_file(node_id)
        return self._read_keys(path) if path.exists() else {}

    def _write_keys(self, node_id, records):
        data = {str(k): records[k] for k in sorted(records)}
        write_secret(self.key_file(node_id), json.dumps(data, sort_keys=True, indent=1).encode())

    def save_payload_key(self, node_id, key_id, key):
        """Add an accepted key. Saving the same key again changes nothing (resumable provisioning); a
        different key under a key id already used is refused (a key id names one key forever)."""
        records = self.key_records(node_id)
        old = records.get(int(key_id))
        if old is not None:
            if old["key"] != key.hex():
                raise FieldnodeError(f"{node_id}: key id {key_id} is already used by another payload key: "
                                     "a key id is never reused")
            return
        records[int(key_id)] = {"key": key.hex(), "created": iso(utcnow()), "not_after": None, "revoked": None}
        self._write_keys(node_id, records)

    def retire_payload_key(self, node_id, key_id, not_after):
        """Accept `key_id` only until `not_after` (a rotation's overlap). Never extends an earlier limit."""
        records = self.key_records(node_id)
        rec = records.get(int(key_id))
        if rec is None:
            return
        if rec["not_after"] is None or parse_iso(rec["not_after"]) > not_after:
            rec["not_after"] = iso(not_after)
            self._write_keys(node_id, records)

    def revoke_payload_keys(self, node_id, when=None):
        """Stop accepting every key of the node (kept in the file, marked revoked, for historical reads)."""
        records = self.key_records(node_id)
        changed = False
        for rec in records.values():
            if not rec.get("revoked"):
                rec["revoked"] = iso(when or utcnow())
                changed = True
        if changed:
            self._write_keys(node_id, records)

    def next_key_id(self, node_id):
        """The next key id for the node: one above the highest ever used (1 for a new node), wrapping
        past 65535 to the lowest id never used."""
        used = set(self.key_records(node_id))
        if not used:
            return 1
        candidate = max(used) + 1
        if candidate <= 0xFFFF:
            return candidate
        for candidate in range(1, 0x10000):
            if candidate not in used:
                return candidate
        raise FieldnodeError(f"{node_id}: all 65535 key ids are used: provision the board under a new node id")

    def payload_keys(self, at=None, include_inactive=False):
        """{node_id: {key_id: master_key}}: the keys accepted at `at` (default now), or every key kept."""
        now = at or utcnow()
        out = {}
        if self.keys_dir.is_dir():
            for path in sorted(self.keys_dir.glob("*.json")):
                recs = self._read_keys(path)
                out[path.stem] = {k: bytes.fromhex(r["key"]) for k, r in recs.items()
                                  if include_inactive or _accepted(r, now)}
        return out

    # -- broker address -------------------------------------------------------------------------------

    def broker_info(self):
        """What broker.json records ({} if nothing yet)."""
        if not self.broker_file.exists():
            return {}
        try:
            return json.loads(self.broker_file.read_text())
        except ValueError as exc:
            raise FieldnodeError(f"{self.broker_file}: not valid JSON ({exc}): fix or delete it") from None

    def broker(self):
        """(host, port) of the fleet's broker as last recorded: where nodes connect."""
        return self._address("port")

    def host_broker(self):
        """(host, port) of the broker's host listener, where the host tools (monitor, ingest) connect."""
        return self._address("host_port")

    def _address(self, port_key):
        data = self.broker_info()
        if "host" not in data or "port" not in data:
            raise FieldnodeError(f"no broker address recorded in {self.root}: pass --broker HOST:PORT "
                                 "(or record one with `fieldnode ca init --broker HOST:PORT`)")
        if port_key not in data:
            raise FieldnodeError(f"no host listener recorded in {self.root}: run `fieldnode broker-config` "
                                 "(it records one) or pass --broker HOST:PORT (the broker's host listener)")
        return data["host"], int(data[port_key])

    def save_broker(self, host=None, port=None, **extra):
        """Record the broker address (and extras such as server_name); keys not given are kept."""
        data = self.broker_info()
        if host is not None:
            data["host"] = host
        if port is not None:
            data["port"] = port
        data.update({k: v for k, v in extra.items() if v is not None})
        self.broker_file.parent.mkdir(parents=True, exist_ok=True)
        pki.atomic_write(self.broker_file, json.dumps(data, sort_keys=True).encode())


class KeyRing:
    """Payload keys by node id for a monitor: a mapping-like `get(node_id, default)` returning
    {key_id: master_key} of the keys accepted *now*. A node's key file is re-read whenever it changes on
    disk (a node provisioned, rotated or revoked while a monitor runs), and the overlap limit of a
    rotated-out key is checked at every lookup.

    It is on the path of every message ingest verifies, so a lookup costs one stat() of the key file: the
    accepted keys are worked out again only when the file changed or an overlap limit has passed."""

    def __init__(self, fleet):
        self._fleet = fleet
        self._cache = {}  # node_id -> [path, stamp, keys, until (epoch seconds: when `keys` may change)]

    def get(self, node_id, default=None):
        entry = self._cache.get(node_id)
        if entry is None:
            try:
                path = str(self._fleet.key_file(node_id))
            except FieldnodeError:
                return default
            entry = [path, None, None, 0.0]
        try:
            st = os.stat(entry[0])
        except FileNotFoundError:
            self._cache.pop(node_id, None)
            return default
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        now = time.time()
        if stamp != entry[1] or now >= entry[3]:
            # Work the new state out in locals and store it in one step: a reload that fails half-way
            # (a bad hex or date in the file) must not leave the new stamp next to the old keys, or a
            # revoked key would stay accepted until the file changed again.
            self._cache.pop(node_id, None)
            records = self._fleet._read_keys(Path(entry[0]))
            at = utcnow()
            try:
                keys = {k: bytes.fromhex(r["key"]) for k, r in records.items() if _accepted(r, at)} or None
                limits = [parse_iso(r["not_after"]).timestamp() for r in records.values()
                          if not r.get("revoked") and r.get("not_after") and parse_iso(r["not_after"]) > at]
            except (KeyError, TypeError, ValueError) as exc:
                raise FieldnodeError(f"{entry[0]}: unreadable payload keys ({exc!r}): restore it from backup") from None
            entry = [entry[0], stamp, keys, min(limits, default=float("inf"))]
            self._cache[node_id] = entry
        keys = entry[2]
        return dict(keys) if keys else default
