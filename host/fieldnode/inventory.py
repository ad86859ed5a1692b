"""The inventory: every node and every certificate the fleet CA issued, in one SQLite file in the fleet
directory (`<fleet>/inventory.sqlite`).

Two tables:

nodes         one row per node id: status, board, chip MAC, the current key id and certificate (serial,
              SHA-256 fingerprint, expiry), the SHA-256 of every file written to the board, timestamps.
certificates  one row per certificate the CA signed (nodes, the host, the broker): serial, subject, kind,
              fingerprint, validity, status, and for a rotated-out certificate when it goes on the CRL.

Node status: `pending` (key material issued, not yet written and verified on a board), `provisioned`,
`rotated` (provisioned, keys rotated at least once), `revoked` (final: a node id is never reused).
Certificate status: `pending`, `active`, `superseded` (rotated out; on the CRL from `revoke_after` on),
`revoked`.

Serials are stored as lowercase hex (X.509 serials are up to 159 bits, beyond SQLite's integers); times
as ISO 8601 UTC strings. Every change is one transaction; connections wait for each other (batch
provisioning writes from several threads and processes).
"""
import json
import sqlite3
from pathlib import Path

from .errors import FieldnodeError
from .fleet import iso, utcnow

NODE_STATUSES = ("pending", "provisioned", "rotated", "revoked")
CERT_STATUSES = ("pending", "active", "superseded", "revoked")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id          TEXT PRIMARY KEY,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'provisioned', 'rotated', 'revoked')),
    board            TEXT,
    mac              TEXT,
    port             TEXT,
    key_id           INTEGER,
    cert_serial      TEXT,
    cert_fingerprint TEXT,
    cert_not_after   TEXT,
    config_sha256    TEXT,
    files            TEXT NOT NULL DEFAULT '{}',
    operator         TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    provisioned_at   TEXT,
    rotated_at       TEXT,
    revoked_at       TEXT
);
CREATE TABLE IF NOT EXISTS certificates (
    serial        TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('node', 'host', 'server')),
    fingerprint   TEXT NOT NULL UNIQUE,
    key_id        INTEGER,
    not_before    TEXT NOT NULL,
    not_after     TEXT NOT NULL,
    issued_at     TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'active', 'superseded', 'revoked')),
    revoke_after  TEXT,
    revoked_at    TEXT
);
CREATE INDEX IF NOT EXISTS certificates_subject ON certificates (subject);
CREATE INDEX IF NOT EXISTS nodes_mac ON nodes (mac);
"""


class InventoryError(FieldnodeError):
    pass


def serial_hex(serial):
    return "%x" % serial if isinstance(serial, int) else str(serial).lower()


class Inventory:
    """The fleet's inventory database. Open with `Inventory(path)` (created if missing) and close, or use
    as a context manager. Methods return plain dicts."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA foreign_keys = ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise InventoryError(f"{self.path} was written by a newer fieldnode (schema {version}): "
                                     "upgrade fieldnode")
            if version < _SCHEMA_VERSION:
                with self.transaction():
                    self._create()
        except sqlite3.DatabaseError as exc:
            raise InventoryError(f"{self.path}: not a usable inventory ({exc}): restore it from backup") from None

    def _create(self):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute("PRAGMA user_version = %d" % _SCHEMA_VERSION)

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken at once, so read-then-write
        decisions inside it cannot race another process)."""
        return self._Tx(self.db)

    # -- reading --------------------------------------------------------------------------------------

    @staticmethod
    def _node(row):
        if row is None:
            return None
        d = dict(row)
        d["files"] = json.loads(d["files"] or "{}")
        return d

    def get(self, node_id):
        return self._node(self.db.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone())

    def nodes(self, include_revoked=True):
        sql = "SELECT * FROM nodes" + ("" if include_revoked else " WHERE status != 'revoked'") + " ORDER BY node_id"
        return [self._node(r) for r in self.db.execute(sql)]

    def by_mac(self, mac):
        """Nodes (not revoked) last seen on a board with this MAC."""
        return [self._node(r) for r in self.db.execute(
            "SELECT * FROM nodes WHERE mac = ? AND status != 'revoked' ORDER BY node_id", (mac,))]

    def certificates(self, subject=None, kind=None):
        sql, params = "SELECT * FROM certificates WHERE 1 = 1", []
        if subject is not None:
            sql += " AND subject = ?"
            params.append(subject)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY issued_at, rowid", params)]

    def certificate(self, serial):
        row = self.db.execute("SELECT * FROM certificates WHERE serial = ?", (serial_hex(serial),)).fetchone()
        return dict(row) if row else None

    def crl_serials(self, now=None):
        """Serials (int) that belong on the CRL at `now`: revoked certificates, and superseded ones whose
        overlap has ended."""
        now = iso(now or utcnow())
        rows = self.db.execute("SELECT serial FROM certificates WHERE status = 'revoked' "
                               "OR (status = 'superseded' AND revoke_after IS NOT NULL AND revoke_after <= ?)",
                               (now,))
        return sorted(int(r[0], 16) for r in rows)

    # -- writing --------------------------------------------------------------------------------------

    def add_certificate(self, cert_info, status="pending"):
        """Record an issued certificate (idempotent: recording the same serial again changes nothing).
        `cert_info`: serial, subject, kind, fingerprint, key_id, not_before, not_after, issued_at."""
        c = dict(cert_info)
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO certificates (serial, subject, kind, fingerprint, key_id, not_before, "
                       "not_after, issued_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (serial_hex(c["serial"]), c["subject"], c["kind"], c["fingerprint"], c.get("key_id"),
                        c["not_before"], c["not_after"], c["issued_at"], status))

    def replace_host_certificate(self, cert_info, when=None):
        """Record a new host certificate as the active one; earlier ones are revoked (the CRL then carries
        any the fleet CA signed, as fleets made before the pinned host certificate had)."""
        with self.transaction() as db:
            db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ? WHERE kind = 'host' "
                       "AND status != 'revoked' AND serial != ?",
                       (iso(when or utcnow()), serial_hex(cert_info["serial"])))
        self.add_certificate(cert_info, "active")

    def add_pending_node(self, node_id, board=None, port=None, operator=None):
        """A row for a node whose key material has been issued (kept if it exists)."""
        now = iso(utcnow())
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO nodes (node_id, status, board, port, operator, created_at, updated_at) "
                       "VALUES (?, 'pending', ?, ?, ?, ?, ?)", (node_id, board, port, operator, now, now))

    def commit_provisioning(self, node_id, *, serial, board, mac, port, key_id, config_sha256, files, operator,
                            rotation=None):
        """Make a verified board write official: the new certificate active, the node provisioned (or
        rotated). `rotation`: {"revoke_after": datetime|None (None: revoke now)} for the certificates it
        replaces. Idempotent: committing the same serial twice changes nothing the second time."""
        serial = serial_hex(serial)
        now = utcnow()
        with self.transaction() as db:
            cert = db.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchone()
            if cert is None or cert["subject"] != node_id:
                raise InventoryError(f"certificate {serial} of {node_id} is not in the inventory: "
                                     "run `fieldnode inventory show %s` and report this" % node_id)
            if cert["status"] == "active":
                return False
            if cert["status"] != "pending":
                raise InventoryError(f"certificate {serial} of {node_id} is {cert['status']}, not pending: "
                                     "it cannot be put in service")
            node = db.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if node is None:
                raise InventoryError(f"{node_id} is not in the inventory")
            if node["status"] == "revoked":
                raise InventoryError(f"{node_id} was revoked: a revoked node id is not reused")
            for old in db.execute("SELECT serial FROM certificates WHERE subject = ? AND kind = 'node' "
                                  "AND status = 'active'", (node_id,)).fetchall():
                if rotation is None or rotation.get("revoke_after") is None:
                    db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ? WHERE serial = ?",
                               (iso(now), old["serial"]))
                else:
                    db.execute("UPDATE certificates SET status = 'superseded', revoke_after = ? WHERE serial = ?",
                               (iso(rotation["revoke_after"]), old["serial"]))
            db.execute("UPDATE certificates SET status = 'active' WHERE serial = ?", (serial,))
            rotated = node["status"] in ("provisioned", "rotated")
            db.execute("UPDATE nodes SET status = ?, board = ?, mac = COALESCE(?, mac), port = ?, key_id = ?, "
                       "cert_serial = ?, cert_fingerprint = ?, cert_not_after = ?, config_sha256 = ?, files = ?, "
                       "operator = ?, updated_at = ?, provisioned_at = COALESCE(provisioned_at, ?), "
                       "rotated_at = CASE WHEN ? THEN ? ELSE rotated_at END WHERE node_id = ?",
                       ("rotated" if rotated else "provisioned", board, mac, port, key_id, serial,
                        cert["fingerprint"], cert["not_after"], config_sha256, json.dumps(files, sort_keys=True),
                        operator, iso(now), iso(now), rotated, iso(now), node_id))
        return True

    def revoke_node(self, node_id, operator=None, when=None):
        """Mark the node and every certificate of it revoked; return the serials (int) revoked now."""
        when = iso(when or utcnow())
        with self.transaction() as db:
            node = db.execute("SELECT status FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if node is None:
                raise InventoryError(f"unknown node {node_id!r}: see `fieldnode inventory list`")
            rows = db.execute("SELECT serial FROM certificates WHERE subject = ? AND kind = 'node' "
                              "AND status != 'revoked'", (node_id,)).fetchall()
            db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ? WHERE subject = ? "
                       "AND kind = 'node' AND status != 'revoked'", (when, node_id))
            db.execute("UPDATE nodes SET status = 'revoked', revoked_at = COALESCE(revoked_at, ?), updated_at = ?, "
                       "operator = COALESCE(?, operator) WHERE node_id = ?", (when, when, operator, node_id))
        return sorted(int(r[0], 16) for r in rows)
