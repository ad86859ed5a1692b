"""Batch provisioning from a CSV file: every row a node, resumable and idempotent.

    rows = read_csv("nodes.csv", fleet, defaults=Settings(broker=("mqtt.plant", 8883)))
    summary = run_batch(fleet, rows, csv_path="nodes.csv", jobs=4, on_result=print)

The whole file is checked before anything happens (a bad cell is a UsageError naming the row and the
column). A node already provisioned is skipped; a node whose earlier run was killed resumes with the key
material already issued for it (see fieldnode.provision), so re-running a batch never issues a second
certificate. With `rotate`, the batch's first run records each node's certificate serial in
`<fleet>/pending/batch-rotate-<id>.json`; a re-run skips the nodes whose serial has changed since (rotated
by this batch), and the journal is removed once a run ends without failures.
"""
import csv
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from . import audit, pki
from .ca import CA
from .errors import FieldnodeError, UsageError
from .fleet import iso, utcnow
from .inventory import Inventory
from .progress import Progress
from .provision import (Action, DEFAULT_OVERLAP_DAYS, Pending, Settings, check_board_name, check_settings,
                        parse_host_port, parse_interval, provision, read_psk, read_thresholds, tidy,
                        has_leftovers)

REQUIRED = ("node_id", "port")
OPTIONAL = ("board", "broker", "server_name", "wifi_ssid", "wifi_psk_file", "interval", "thresholds",
            "bench_i2c", "bench_bus")
COLUMNS = REQUIRED + OPTIONAL
# Fields of a provisioning result repeated in a row's report.
_REPORTED = ("board", "mac", "key_id", "cert_serial", "cert_fingerprint", "cert_not_after", "config_sha256",
             "resumed", "warnings")


@dataclass
class Row:
    line: int          # line number in the CSV file (the header is line 1)
    node_id: str
    port: str
    settings: Settings


def read_csv(path, fleet, defaults=None):
    """Parse and check every row; raise UsageError naming the first bad row and column."""
    path = Path(path)
    defaults = defaults or Settings()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--batch: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    reader = csv.reader(text.splitlines())
    header = None
    rows, seen_ids, seen_ports = [], {}, {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            for name in header:
                if name not in COLUMNS:
                    raise UsageError(f"{path.name} line {line}: unknown column {name!r} "
                                     f"(known: {', '.join(COLUMNS)})")
            for name in REQUIRED:
                if name not in header:
                    raise UsageError(f"{path.name} line {line}: the header has no {name} column "
                                     f"(it needs {', '.join(REQUIRED)})")
            if len(set(header)) != len(header):
                raise UsageError(f"{path.name} line {line}: a column is named twice")
            continue
        where = f"{path.name} row {line}"
        if len(cells) != len(header):
            raise UsageError(f"{where}: {len(cells)} cells where the header has {len(header)} columns")
        cell = dict(zip(header, (c.strip() for c in cells)))
        row = _row(path, line, cell, defaults, fleet)
        for key, seen, value in (("node_id", seen_ids, row.node_id), ("port", seen_ports, row.port)):
            if value in seen:
                raise UsageError(f"{where}, column {key}: {value} is already on row {seen[value]}")
            seen[value] = line
        rows.append(row)
    if not rows:
        raise UsageError(f"{path.name}: no rows (the header names the columns: {', '.join(COLUMNS)})")
    return rows


def _row(path, line, cell, defaults, fleet):
    def col(name):
        return f"{path.name} row {line}, column {name}"

    def rel(value):
        p = Path(value)
        return p if p.is_absolute() else path.parent / p

    node_id = cell["node_id"]
    try:
        pki.check_node_id(node_id)
    except UsageError as exc:
        raise UsageError(f"{col('node_id')}: {exc}") from None
    if not cell["port"]:
        raise UsageError(f"{col('port')}: empty: give the board's serial port (e.g. /dev/ttyUSB0)")
    s = replace(defaults)
    if cell.get("board"):
        s.board = check_board_name(cell["board"], col("board"))
    if cell.get("broker"):
        s.broker = parse_host_port(cell["broker"], col("broker"))
    if cell.get("server_name"):
        s.server_name = cell["server_name"]
    if cell.get("wifi_ssid"):
        s.wifi_ssid = cell["wifi_ssid"]
    if cell.get("wifi_psk_file"):
        s.wifi_psk = read_psk(rel(cell["wifi_psk_file"]), col("wifi_psk_file"))
    if cell.get("interval"):
        s.interval_s = parse_interval(cell["interval"], col("interval"))
    if cell.get("thresholds"):
        s.thresholds = read_thresholds(rel(cell["thresholds"]), col("thresholds"))
    if cell.get("bench_i2c"):
        s.bench_i2c = cell["bench_i2c"]
    if cell.get("bench_bus"):
        s.bench_bus = cell["bench_bus"]
    try:
        check_settings(fleet, node_id, s)
    except FieldnodeError as exc:
        raise UsageError(f"{path.name} row {line}: {exc}") from None
    return Row(line, node_id, cell["port"], s)


def _journal_path(fleet, csv_path):
    digest = hashlib.sha256(str(Path(csv_path).resolve()).encode()).hexdigest()[:16]
    return fleet.pending_dir / f"batch-rotate-{digest}.json"


def _load_journal(fleet, csv_path, rows):
    """{node_id: serial at the batch's first run} (rows added since are recorded now)."""
    path = _journal_path(fleet, csv_path)
    journal = json.loads(path.read_text()) if path.exists() else {"csv": str(Path(csv_path).resolve()),
                                                                   "started": iso(utcnow()), "serials": {}}
    missing = [r.node_id for r in rows if r.node_id not in journal["serials"]]
    if missing:
        with Inventory(fleet.inventory_db) as inv:
            for node_id in missing:
                node = inv.get(node_id)
                journal["serials"][node_id] = node["cert_serial"] if node else None
        fleet.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki.atomic_write(path, json.dumps(journal, sort_keys=True).encode())
    return journal


def _skip_reason(fleet, row, rotate, journal):
    with Inventory(fleet.inventory_db) as inv:
        node = inv.get(row.node_id)
    if node is None or node["status"] == "pending":
        return None
    if node["status"] == "revoked":
        return None  # provision() reports it as a failure with the fix
    if has_leftovers(fleet, row.node_id):
        tidy(fleet, row.node_id)  # an earlier run was killed right after its commit, or while cleaning up
    pending = Pending.dir_for(fleet, row.node_id).exists()
    if not rotate:
        return "already provisioned" + (" (a rotation of it is unfinished: run `fieldnode rotate %s`)"
                                        % row.node_id if pending else "")
    if not pending and node["cert_serial"] != journal["serials"].get(row.node_id):
        return "rotated earlier in this batch"
    return None


def run_batch(fleet, rows, *, csv_path, rotate=False, jobs=1, operator=None, passphrase=None, open_board=None,
              reset=True, overlap_days=DEFAULT_OVERLAP_DAYS, revoke_old=False, on_result=None, progress=None):
    """Provision every row (up to `jobs` boards at once). `on_result(report)` is called in the caller's
    thread for each row as it finishes; returns the summary (see docs/provisioning.md)."""
    fleet.require_ca()
    operator = audit.operator_name(operator)
    journal = _load_journal(fleet, csv_path, rows) if rotate else {"serials": {}}
    ca_lock, ca_cache = threading.Lock(), []

    def ca_loader():  # the CA (and its passphrase) is needed only when a row issues a certificate
        with ca_lock:
            if not ca_cache:
                ca_cache.append(CA.load(fleet, passphrase))
            return ca_cache[0]

    def one(row):
        report = {"type": "row", "row": row.line, "node_id": row.node_id, "port": row.port}
        try:
            reason = _skip_reason(fleet, row, rotate, journal)
            if reason:
                return dict(report, result="skipped", reason=reason)
            res = provision(fleet, row.node_id, row.port, row.settings, rotate=rotate, operator=operator,
                            ca_loader=ca_loader, open_board=open_board, reset=reset, overlap_days=overlap_days,
                            revoke_old=revoke_old)
            report["result"] = res["result"]
            report.update({k: res[k] for k in _REPORTED})
        except FieldnodeError as exc:
            report.update(result="failed", error=str(exc))
        return report

    counts = {"provisioned": 0, "rotated": 0, "skipped": 0, "failed": 0}
    bar = progress or Progress(len(rows), "provision")
    csv_bytes = Path(csv_path).read_bytes()
    with Action(fleet, "batch", None, operator) as act:
        act.hashes = {"csv": hashlib.sha256(csv_bytes).hexdigest()}
        act.details = {"csv": str(Path(csv_path).resolve()), "rows": len(rows), "rotate": rotate}
        pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="provision")
        try:
            for report in pool.map(one, rows) if jobs <= 1 else _as_done(pool, one, rows):
                counts[report["result"]] += 1
                bar.update(advance=1)
                if on_result:
                    on_result(report)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()
        act.details.update(counts)
        if counts["failed"]:
            act.result = "failed: %d of %d rows failed" % (counts["failed"], len(rows))
        elif rotate:
            _journal_path(fleet, csv_path).unlink(missing_ok=True)
    return dict({"type": "summary", "rows": len(rows), "ok": counts["failed"] == 0,
                 "csv": str(Path(csv_path).resolve())}, **counts)


def _as_done(pool, fn, rows):
    from concurrent.futures import as_completed

    for fut in as_completed([pool.submit(fn, r) for r in rows]):
        yield fut.result()
