"""The audit trail: an append-only, hash-chained log of every state-changing technician action.

One JSON object per line in `<fleet>/audit.log`. Each record carries the hash of the record before it
(`prev`) and its own hash over its canonical JSON (`hash`), so editing, removing or reordering any record
breaks the chain at that record. `<fleet>/audit.head` holds the count and the last hash, so cutting
records off the end is detected too. (Whoever can rewrite both files and recompute every hash can forge
the log; ship the head hash elsewhere — e.g. in each deploy's status — to close that gap.)
"""
import datetime
import fcntl
import getpass
import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .errors import FieldnodeError

GENESIS = "0" * 64


class AuditError(FieldnodeError):
    pass


def operator_name(explicit=None):
    """--operator if given, else the OS user."""
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "uid-%d" % os.getuid()


def _digest(record):
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _paths(fleet_root):
    root = Path(fleet_root)
    return root / "audit.log", root / "audit.head"


def append(fleet_root, action, *, result="ok", node=None, mac=None, operator=None, hashes=None, details=None):
    """Append one record and return it. `hashes` maps what -> sha256 hex (firmware, app, config...)."""
    log_path, head_path = _paths(fleet_root)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a+b") as log:
        fcntl.flock(log, fcntl.LOCK_EX)  # one writer at a time, across processes
        count, prev = _head(head_path)
        record = {
            "seq": count + 1,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "operator": operator_name(operator),
            "action": action,
            "node": node,
            "mac": mac,
            "sha256": hashes or {},
            "tool": "fieldnode " + __version__,
            "result": result,
            "details": details or {},
            "prev": prev,
        }
        record["hash"] = _digest(record)
        log.write((json.dumps(record, sort_keys=True) + "\n").encode())
        log.flush()
        os.fsync(log.fileno())
        tmp = head_path.with_name(head_path.name + ".tmp")
        tmp.write_text("%d %s\n" % (record["seq"], record["hash"]))
        os.replace(tmp, head_path)
    return record


def _head(head_path):
    try:
        count, last = head_path.read_text().split()
        return int(count), last
    except FileNotFoundError:
        return 0, GENESIS
    except ValueError:
        raise AuditError(f"{head_path} is corrupt: run `fieldnode audit verify` and restore the fleet backup")


def read(fleet_root, node=None):
    log_path, _ = _paths(fleet_root)
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = {"corrupt": line}
        if node is None or record.get("node") == node:
            out.append(record)
    return out


def verify(fleet_root):
    """Check the whole chain; return the number of records. Raises AuditError naming the first bad one."""
    log_path, head_path = _paths(fleet_root)
    prev, n = GENESIS, 0
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    for lineno, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AuditError(f"audit record {lineno}: not valid JSON (edited or torn)") from None
        if record.get("seq") != lineno:
            raise AuditError(f"audit record {lineno}: sequence {record.get('seq')} where {lineno} belongs "
                             "(a record was removed or reordered)")
        if record.get("prev") != prev:
            raise AuditError(f"audit record {lineno}: does not follow record {lineno - 1} "
                             "(a record before it was removed, reordered or edited)")
        if record.get("hash") != _digest(record):
            raise AuditError(f"audit record {lineno}: its hash does not match its content (edited)")
        prev, n = record["hash"], lineno
    count, last = _head(head_path)
    if (count, last) != (n, prev):
        raise AuditError(f"audit log ends at record {n} but the head says {count}: records were cut off the end")
    return n
