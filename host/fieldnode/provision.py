"""Provisioning: give a node its identity on its board — device key and certificate (CN = node id), a
payload master key with its key id, and config.json — with the inventory and the audit trail in step.

    result = provision(fleet, "cold-room-3", "/dev/ttyUSB0", Settings(board="esp32-devkitc", ...))
    result = rotate(fleet, "cold-room-3", "/dev/ttyUSB0", overlap_days=7)
    result = revoke(fleet, "cold-room-3")

Crash safety — the order of a provisioning, and what a re-run does after a kill at any point:

1. checks: the inventory (revoked? already provisioned?), the board (reachable, the right kind, not
   already another live node) and the config (built and validated with the firmware's own parser).
   Nothing has changed yet; a failure here changes nothing.
2. key material: if `<fleet>/pending/<node>/` exists, an earlier run issued it and it is reused. Otherwise
   a device key, certificate and payload key are made and written to that directory (0600, one atomic
   rename), *then* recorded as issued (`ca/issued/<serial>.pem`, inventory row `pending`, keys file).
   A kill before the rename leaves nothing (a certificate nobody holds and nobody recorded); a kill after
   it is resumed with the same certificate. So a node never gets a second certificate by accident.
3. the board: every file is written (atomically, by Board) under a name carrying its key id, secrets
   first, config.json last; files already holding the right bytes are skipped. config.json is the
   switch: at every instant the board's config names a complete, consistent set of files (the old one
   or the new one). Everything is read back and compared by SHA-256; stale key files are removed.
4. commit: one inventory transaction (certificate active, node provisioned/rotated, file hashes, MAC);
   then the rotated-out payload key gets its overlap limit (or is revoked), then the pending directory
   is removed. A kill between these steps is finished by the next run, which sees the pending serial
   already active.
5. the board is reset so it boots into the new identity; an audit record closes the action, also when
   it failed (result "failed: <reason>").
"""
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import audit, boards, nodeconfig, pki
from .ca import CA, crl_lock, record_issued
from .errors import FieldnodeError, UsageError
from .fleet import iso, utcnow, write_secret
from .inventory import Inventory, serial_hex

CONFIG_FILE = "config.json"
CA_FILE = "ca.der"
DEFAULT_INTERVAL_S = 10
DEFAULT_OVERLAP_DAYS = 7
UNIX_PLATFORMS = ("linux", "darwin", "freebsd")
# Files a provisioning owns on the board; anything else (firmware, counters.dat) is never touched.
_KEY_FILE = re.compile(r"(node\.k\d+\.der|node\.k\d+\.key\.der|payload\.k\d+\.key|node\.der|node\.key\.der|"
                       r"payload\.key)\Z")


class ProvisionError(FieldnodeError):
    pass


class AlreadyProvisioned(ProvisionError):
    pass


class RevokedNode(ProvisionError):
    pass


@dataclass
class Settings:
    """What goes into a node's config besides its keys. None means: the default (fleet's broker, detected
    board, 10 s interval, no thresholds)."""
    board: str = None
    broker: tuple = None             # (host, port)
    server_name: str = None
    wifi_ssid: str = None
    wifi_psk: str = field(default=None, repr=False)
    interval_s: float = None
    thresholds: dict = None
    bench_i2c: str = None            # unix board: HOST:PORT of the emulated sensor bus
    bench_bus: str = None            # unix board: bus name (default: the node id)


def board_files(key_id):
    """The names of the node's files on the board for this key id (config.json's `files` section)."""
    return {"ca": CA_FILE, "cert": "node.k%d.der" % key_id, "key": "node.k%d.key.der" % key_id,
            "payload_key": "payload.k%d.key" % key_id}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def config_bytes(cfg):
    return (json.dumps(cfg, sort_keys=True, indent=1) + "\n").encode()


# -- the audit record of one action --------------------------------------------------------------------

class Action:
    """Collects what an action did and appends one audit record when it ends — "ok", or "failed: why"."""

    def __init__(self, fleet, action, node=None, operator=None):
        self.fleet, self.action, self.node, self.operator = fleet, action, node, operator
        self.mac = None
        self.hashes = {}
        self.details = {}
        self.result = "ok"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            result = self.result
        elif issubclass(exc_type, KeyboardInterrupt):
            result = "interrupted"
        elif isinstance(exc, FieldnodeError):
            result = "failed: " + str(exc).splitlines()[0] if str(exc) else "failed"
        else:
            result = "failed: %s: %s" % (exc_type.__name__, str(exc).splitlines()[0] if str(exc) else "")
        if not self.fleet.root.is_dir():
            return False  # no fleet, nothing to record into (e.g. `provision` before `ca init`)
        try:
            audit.append(self.fleet.root, self.action, result=result, node=self.node, mac=self.mac,
                         operator=self.operator, hashes=self.hashes, details=self.details)
        except Exception:
            if exc_type is None:
                raise
        return False


# -- pending key material ------------------------------------------------------------------------------

class Pending:
    """Key material issued for a node but not yet committed: `<fleet>/pending/<node>/` with node.der,
    node.key.der and payload.key (0600) and meta.json. Created in one rename, so it is whole or absent."""

    def __init__(self, path, meta):
        self.path = Path(path)
        self.meta = meta
        self.node_id = meta["node_id"]
        self.kind = meta["kind"]
        self.key_id = meta["key_id"]
        self.serial = meta["serial"]

    @staticmethod
    def dir_for(fleet, node_id):
        return fleet.pending_dir / node_id

    @classmethod
    def load(cls, fleet, node_id):
        path = cls.dir_for(fleet, node_id)
        if not path.exists():
            return None
        try:
            meta = json.loads((path / "meta.json").read_text())
            pending = cls(path, meta)
            pending.cert, pending.key_der, pending.payload_key  # noqa: B018 - all three must be readable
        except (OSError, ValueError, KeyError) as exc:
            raise ProvisionError(f"{path} is damaged ({exc}): move it away and run the command again "
                                 "(its certificate stays recorded as pending)") from None
        return pending

    @classmethod
    def create(cls, fleet, node_id, kind, key_id, key, cert, payload_key):
        fleet.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=fleet.pending_dir, prefix=".%s." % node_id))
        meta = {"node_id": node_id, "kind": kind, "key_id": key_id, "serial": serial_hex(cert.serial_number),
                "created": iso(utcnow())}
        try:
            write_secret(tmp / "node.key.der", pki.key_bytes(key, "der"))
            write_secret(tmp / "payload.key", payload_key)
            pki.write_cert(tmp / "node.der", cert, "der")
            pki.atomic_write(tmp / "meta.json", json.dumps(meta, sort_keys=True).encode())
            os.rename(tmp, cls.dir_for(fleet, node_id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(fleet.pending_dir)
        return cls(cls.dir_for(fleet, node_id), meta)

    @property
    def cert(self):
        return pki.load_cert(self.path / "node.der")

    @property
    def cert_der(self):
        return (self.path / "node.der").read_bytes()

    @property
    def key_der(self):
        return (self.path / "node.key.der").read_bytes()

    @property
    def payload_key(self):
        data = (self.path / "payload.key").read_bytes()
        if len(data) != 32:
            raise ValueError("payload.key is %d bytes, not 32" % len(data))
        return data

    def record(self, fleet, inventory, board=None, port=None, operator=None):
        """Make sure the issue is on record everywhere (idempotent)."""
        record_issued(fleet, inventory, self.cert, self.node_id, "node", self.key_id, "pending")
        inventory.add_pending_node(self.node_id, board, port, operator)
        fleet.save_payload_key(self.node_id, self.key_id, self.payload_key)

    def remove(self):
        """Gone in one rename (a kill cannot leave half a directory), then deleted; a leftover of a kill
        is deleted by the next command on the node (node_lock)."""
        tomb = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=".%s." % self.node_id))
        os.rename(self.path, tomb / "x")
        _fsync_dir(self.path.parent)
        shutil.rmtree(tomb, ignore_errors=True)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def node_lock(fleet, node_id):
    """One fieldnode process at a time per node (a second one fails at once, it does not wait)."""
    fleet.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fleet.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(fleet.locks_dir / (node_id + ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(f"another fieldnode command is working on {node_id} right now: "
                                 "wait for it to finish, then run this again") from None
        for stale in fleet.pending_dir.glob(".%s.*" % node_id):  # torn Pending.create of a killed run
            shutil.rmtree(stale, ignore_errors=True)
        yield


# -- the board -----------------------------------------------------------------------------------------

def _default_open_board(port):
    from .board import Board

    return Board(port)


def normalise_mac(mac):
    if not mac:
        return None
    digits = re.sub(r"[^0-9a-fA-F]", "", str(mac)).lower()
    if len(digits) != 12:
        return str(mac).lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def chip_of(info):
    """esptool chip name from MicroPython's sys.implementation._machine ("... with ESP32S3"), or None."""
    machine = (info.get("machine") or "").upper().replace("-", "")
    for chip in ("ESP32S3", "ESP32S2", "ESP32C3", "ESP32C6", "ESP32H2", "ESP32"):
        if chip in machine:
            return chip.lower()
    return None


def resolve_board(name, info, port):
    """The board data for `name`, checked against what the board on `port` says it is; or, when no
    name is given, the one board in boards/ that fits (the unix board, or the only board of that chip)."""
    platform = info.get("platform")
    chip = chip_of(info)
    if name is None:
        data = [boards.load(n) for n in boards.names()]
        if platform == "esp32":
            fits = [b for b in data if b["chip"] == chip]
        elif platform in UNIX_PLATFORMS:
            fits = [b for b in data if b["platform"] == "unix"]
        else:
            fits = []
        if len(fits) != 1:
            raise UsageError("cannot tell which board is on %s (%s): pass --board, one of %s"
                             % (port, info.get("machine") or platform, ", ".join(boards.names())))
        return fits[0]
    board = boards.load(name)
    if board["platform"] == "esp32":
        if platform != "esp32":
            raise ProvisionError(f"--board {name} is an ESP32 board but the board on {port} runs MicroPython "
                                 f"for {platform!r}: check --port and --board")
        if chip and chip != board["chip"]:
            raise ProvisionError(f"--board {name} has an {board['chip']} but the board on {port} is an {chip}: "
                                 "pass the matching --board")
    elif platform not in UNIX_PLATFORMS:
        raise ProvisionError(f"--board {name} is the Unix-port board but {port} has MicroPython for "
                             f"{platform!r}: pass that board's --board")
    return board


def _read_board_config(board):
    """The board's config.json as a dict, None if there is none, "corrupt" if it is unreadable."""
    if board.sha256(CONFIG_FILE) is None:
        return None
    try:
        data = json.loads(board.read_file(CONFIG_FILE))
        return data if isinstance(data, dict) else "corrupt"
    except ValueError:
        return "corrupt"


def _names(entries):
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append(e)
        elif isinstance(e, dict):
            out.append(e.get("name"))
        else:
            out.append(e[0])
    return [n.rsplit("/", 1)[-1] for n in out if n]


def _write_and_verify(board, files, port):
    """Write the files whose content differs, in order; read every hash back. Returns (written, hashes)."""
    written = []
    want = {name: sha256(data) for name, data in files}
    before = _hashes(board, want)
    for name, data in files:
        if before[name] != want[name]:
            board.write_file(name, data)
            written.append(name)
    after = _hashes(board, want)
    for name, _ in files:
        got = after[name]
        if got != want[name]:
            raise ProvisionError(f"{name} on the board at {port} does not read back as written (sha256 "
                                 f"{got or 'missing'}): check the USB cable, then run the same command again "
                                 "(it resumes)")
    return written, want


def _hashes(board, names):
    """{name: sha256 hex or None} as the board computes them (one round trip when the Board can)."""
    many = getattr(board, "sha256_many", None)
    return many(list(names)) if many else {name: board.sha256(name) for name in names}


def _remove_stale(board, keep):
    removed = []
    for name in _names(board.listdir("/")):
        if _KEY_FILE.match(name) and name not in keep:
            board.remove(name)
            removed.append(name)
    return removed


# -- config --------------------------------------------------------------------------------------------

def _broker_defaults(fleet, settings):
    info = fleet.broker_info()
    if settings.broker:
        host, port = settings.broker
    else:
        host, port = fleet.broker()
    server_name = settings.server_name
    if server_name is None and info.get("server_name") and info["server_name"] != host:
        server_name = info["server_name"]
    return host, port, server_name


def build_config(fleet, node_id, key_id, board, settings, board_bench=None):
    """The node's config (validated by the firmware's parser) from `settings` and the fleet defaults.
    `board_bench` is what a virtual board says about its sensor bus (Board.info()["bench"]): the unix
    board's `bench` section unless --bench-i2c / --bench-bus say otherwise."""
    host, port, server_name = _broker_defaults(fleet, settings)
    wifi = bench = None
    if board["platform"] == "esp32":
        if not settings.wifi_ssid:
            raise UsageError("an ESP32 node needs Wi-Fi: pass --wifi-ssid NAME and --wifi-psk-file FILE "
                             "(or $FIELDNODE_WIFI_PSK)")
        wifi = {"ssid": settings.wifi_ssid, "psk": settings.wifi_psk or ""}
    elif settings.wifi_ssid:
        raise UsageError("--wifi-ssid is for ESP32 boards; the unix board uses the host's network")
    if board["platform"] == "unix":
        board_bench = board_bench if isinstance(board_bench, dict) else {}
        i2c = settings.bench_i2c or board_bench.get("i2c")
        if not i2c:
            raise UsageError("the unix board reads its sensor over the bench bus and this board does not say "
                             "where it is: pass --bench-i2c HOST:PORT")
        bus = settings.bench_bus or (board_bench.get("bus") if not settings.bench_i2c else None) or node_id
        bench = {"i2c": i2c, "bus": bus}
    elif settings.bench_i2c:
        raise UsageError("--bench-i2c is only for the unix board")
    cfg = nodeconfig.build(node_id, key_id, host, port, board,
                           interval_s=DEFAULT_INTERVAL_S if settings.interval_s is None else settings.interval_s,
                           thresholds=settings.thresholds, wifi=wifi, bench=bench, server_name=server_name)
    cfg["files"] = board_files(key_id)
    nodeconfig.validate(cfg)
    return cfg


def _rekey_config(cfg, key_id, node_id, port):
    """The board's current config with a new key id and file names (rotation keeps every setting)."""
    if cfg is None:
        raise ProvisionError(f"no config.json on the board at {port}: provision it again with "
                             f"`fieldnode provision {node_id} --rotate --port {port}` and the full options")
    if cfg == "corrupt":
        raise ProvisionError(f"config.json on the board at {port} is unreadable: provision it again with "
                             f"`fieldnode provision {node_id} --rotate --port {port}` and the full options")
    cfg = dict(cfg, key_id=key_id, files=board_files(key_id))
    nodeconfig.validate(cfg)
    return cfg


# -- provision / rotate --------------------------------------------------------------------------------

def provision(fleet, node_id, port, settings=None, *, rotate=False, existing_only=False, operator=None,
              passphrase=None, ca_loader=None, open_board=None, reset=True, overlap_days=DEFAULT_OVERLAP_DAYS,
              revoke_old=False):
    """Provision `node_id` onto the board at `port`; with `rotate`, a node already provisioned gets new
    keys instead of an AlreadyProvisioned error. `settings=None` (rotation only) keeps the board's current
    config. Returns a dict describing what was done (see docs/provisioning.md, "--json report")."""
    pki.check_node_id(node_id)
    if overlap_days < 0:
        raise UsageError("--overlap-days must be 0 or more")
    operator = audit.operator_name(operator)
    fleet.require_ca()
    ca_loader = ca_loader or (lambda: CA.load(fleet, passphrase))
    open_board = open_board or _default_open_board
    action_name = "rotate" if existing_only else "provision"
    with Action(fleet, action_name, node_id, operator) as act:
        act.details["port"] = port
        with node_lock(fleet, node_id), Inventory(fleet.inventory_db) as inv:
            result = _provision_locked(fleet, inv, node_id, port, settings, act, rotate=rotate or existing_only,
                                       existing_only=existing_only, operator=operator, ca_loader=ca_loader,
                                       open_board=open_board, reset=reset, overlap_days=overlap_days,
                                       revoke_old=revoke_old)
        return result


def rotate(fleet, node_id, port, settings=None, **kw):
    """New device key and certificate and a new payload key id for a provisioned node (see provision)."""
    return provision(fleet, node_id, port, settings, existing_only=True, **kw)


def _provision_locked(fleet, inv, node_id, port, settings, act, *, rotate, existing_only, operator, ca_loader,
                      open_board, reset, overlap_days, revoke_old):
    node = inv.get(node_id)
    if node and node["status"] == "revoked":
        raise RevokedNode(f"{node_id} was revoked on {node['revoked_at']}: node ids are never reused, "
                          "provision this board under a new node id")
    pending = _finish_committed(fleet, inv, node, Pending.load(fleet, node_id), overlap_days, revoke_old,
                                ca_loader)
    established = node is not None and node["status"] in ("provisioned", "rotated")
    if established and not rotate:
        raise AlreadyProvisioned(f"{node_id} is already provisioned (certificate {node['cert_serial'][:12]}…, "
                                 f"{node['provisioned_at']}): use `fieldnode rotate {node_id} --port {port}` "
                                 "(or provision --rotate) for new keys")
    if existing_only and not established:
        raise ProvisionError(f"{node_id} is not provisioned yet: use `fieldnode provision {node_id} --port {port}`")
    kind = "rotate" if established else "provision"
    act.action = kind
    if pending and pending.kind != kind:
        raise ProvisionError(f"{pending.path} holds an unfinished {pending.kind} but {node_id} is "
                             f"{node['status'] if node else 'not in the inventory'}: move it away and run again")
    if settings is None and kind == "provision":
        settings = Settings()
    resumed = pending is not None

    with open_board(port) as board:
        info = board.info()
        mac = normalise_mac(info.get("mac"))
        act.mac = mac
        on_board = _read_board_config(board)
        if settings is not None:
            board_data = resolve_board(settings.board, info, port)
        else:
            if isinstance(on_board, dict) and isinstance(on_board.get("board"), dict):
                board_data = resolve_board(on_board["board"].get("name"), info, port)
            else:
                board_data = resolve_board(None, info, port)
        _check_identity(inv, node_id, port, mac, on_board, existing_only)

        # A draft with the key id this run will use: any bad option fails here, before anything is issued.
        key_id = pending.key_id if pending else fleet.next_key_id(node_id)
        draft = (build_config(fleet, node_id, key_id, board_data, settings, info.get("bench"))
                 if settings is not None
                 else _rekey_config(on_board, key_id, node_id, port))

        if pending is None:
            ca = ca_loader()
            key, cert = ca.issue_node(node_id)
            pending = Pending.create(fleet, node_id, kind, key_id, key, cert, os.urandom(32))
            del key
        pending.record(fleet, inv, board_data["name"], port, operator)
        cert = pending.cert
        act.details.update({"key_id": key_id, "cert_serial": pending.serial, "cert_fingerprint": pki.fingerprint(cert),
                            "board": board_data["name"], "resumed": resumed})

        cfg = draft
        cfg_bytes = config_bytes(cfg)
        files = [(CA_FILE, pki.load_cert(fleet.ca_cert).public_bytes(_der())),
                 (cfg["files"]["cert"], pending.cert_der),
                 (cfg["files"]["key"], pending.key_der),
                 (cfg["files"]["payload_key"], pending.payload_key),
                 (CONFIG_FILE, cfg_bytes)]
        written, hashes = _write_and_verify(board, files, port)
        removed = _remove_stale(board, {name for name, _ in files})
        act.hashes = {"config": hashes[CONFIG_FILE]}

        previous_key_id = node["key_id"] if established else None
        inv.commit_provisioning(
            node_id, serial=pending.serial, board=board_data["name"], mac=mac, port=port, key_id=key_id,
            config_sha256=hashes[CONFIG_FILE], files=hashes, operator=operator,
            rotation=None if kind == "provision" or revoke_old else
            {"revoke_after": utcnow() + datetime.timedelta(days=overlap_days)})
        overlap_end = _after_commit(fleet, inv, node_id, key_id, kind, overlap_days, revoke_old, ca_loader)
        pending.remove()

        warnings = []
        if reset:
            try:
                board.hard_reset()
            except FieldnodeError as exc:
                warnings.append(f"provisioned, but the reset failed ({exc}): press the board's RESET button")
    row = inv.get(node_id)
    return {"node_id": node_id, "result": "rotated" if kind == "rotate" else "provisioned", "resumed": resumed,
            "port": port, "board": board_data["name"], "mac": mac, "key_id": key_id,
            "previous_key_id": previous_key_id, "previous_key_accepted_until": overlap_end,
            "cert_serial": pending.serial, "cert_fingerprint": row["cert_fingerprint"],
            "cert_not_after": row["cert_not_after"], "config_sha256": hashes[CONFIG_FILE], "files": hashes,
            "written": written, "removed": removed, "reset": reset and not warnings, "warnings": warnings}


def _der():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _check_identity(inv, node_id, port, mac, on_board, existing_only):
    """The board must not be another live node of this fleet (by its config, or by its MAC)."""
    if isinstance(on_board, dict) and on_board.get("node_id") not in (None, node_id):
        other = on_board["node_id"]
        if existing_only:
            raise ProvisionError(f"the board on {port} is {other}, not {node_id}: check --port")
        row = inv.get(other) if isinstance(other, str) else None
        if row and row["status"] != "revoked":
            raise ProvisionError(f"the board on {port} is already {other} of this fleet: revoke {other} first "
                                 f"(`fieldnode revoke {other}`) or use another board")
    if mac:
        others = [n["node_id"] for n in inv.by_mac(mac) if n["node_id"] != node_id]
        if others:
            raise ProvisionError(f"the board on {port} (MAC {mac}) is already {others[0]} of this fleet: revoke "
                                 f"{others[0]} first (`fieldnode revoke {others[0]}`) or use another board")


def _finish_committed(fleet, inv, node, pending, overlap_days=DEFAULT_OVERLAP_DAYS, revoke_old=False,
                      ca_loader=None):
    """A pending directory whose certificate is already the node's: a run was killed after its commit.
    Finish that run's last steps and remove it; return the pending material still to use, if any."""
    if pending and node and pending.serial == node["cert_serial"]:
        _after_commit(fleet, inv, node["node_id"], pending.key_id, pending.kind, overlap_days, revoke_old,
                      ca_loader)
        pending.remove()
        return None
    return pending


def tidy(fleet, node_id):
    """Finish a provisioning that was committed but killed before it cleaned up (the batch calls this for
    the rows it skips). Returns True if there was something to finish. Never issues anything."""
    with node_lock(fleet, node_id), Inventory(fleet.inventory_db) as inv:  # (the lock clears leftovers)
        pending = Pending.load(fleet, node_id)
        return pending is not None and _finish_committed(fleet, inv, inv.get(node_id), pending) is None


def has_leftovers(fleet, node_id):
    """Is there a pending directory, or a leftover of a killed run, for this node?"""
    return Pending.dir_for(fleet, node_id).exists() or any(fleet.pending_dir.glob(".%s.*" % node_id))


def _after_commit(fleet, inv, node_id, key_id, kind, overlap_days, revoke_old, ca_loader):
    """The steps after the inventory commit, idempotent: limit (or revoke) the rotated-out payload keys;
    with revoke_old, publish the CRL. Returns when the old key stops being accepted (ISO), if any."""
    if kind != "rotate":
        return None
    until = None
    old_ids = [k for k, r in fleet.key_records(node_id).items()
               if k != key_id and not r.get("revoked") and r.get("not_after") is None]
    if revoke_old:
        for k in old_ids:
            fleet.retire_payload_key(node_id, k, utcnow())
        with crl_lock(fleet):
            ca_loader().write_crl(inv)
    else:
        end = utcnow() + datetime.timedelta(days=overlap_days)
        for k in old_ids:
            fleet.retire_payload_key(node_id, k, end)
        until = iso(end) if old_ids else None
    return until


# -- revoke --------------------------------------------------------------------------------------------

def revoke(fleet, node_id, *, operator=None, passphrase=None, ca_loader=None, reason=None):
    """Revoke a node: every certificate of it on the CRL (`<fleet>/ca/crl.pem`), inventory status
    `revoked`, its payload keys no longer accepted by the host (kept, marked revoked, for reading old
    messages deliberately). Idempotent: revoking again rewrites the CRL and reports `already`."""
    pki.check_node_id(node_id)
    operator = audit.operator_name(operator)
    fleet.require_ca()
    ca_loader = ca_loader or (lambda: CA.load(fleet, passphrase))
    with Action(fleet, "revoke", node_id, operator) as act:
        if reason:
            act.details["reason"] = reason
        with node_lock(fleet, node_id), Inventory(fleet.inventory_db) as inv:
            node = inv.get(node_id)
            if node is None:
                raise ProvisionError(f"unknown node {node_id!r}: see `fieldnode inventory list`")
            act.mac = node["mac"]
            already = node["status"] == "revoked"
            ca = ca_loader()
            with crl_lock(fleet):
                serials = inv.revoke_node(node_id, operator)
                path, number, listed = ca.write_crl(inv)
            fleet.revoke_payload_keys(node_id)
            pending = Pending.load(fleet, node_id)
            if pending:
                pending.remove()
            act.hashes = {"crl": sha256(path.read_bytes())}
            act.details.update({"revoked_serials": [serial_hex(s) for s in serials], "crl_number": number,
                                "already": already})
            row = inv.get(node_id)
        return {"node_id": node_id, "result": "revoked", "already": already,
                "revoked_serials": [serial_hex(s) for s in serials], "revoked_at": row["revoked_at"],
                "crl": str(path), "crl_number": number, "crl_entries": len(listed)}


# -- option values (shared by the command line and batch CSV cells; `what` names where the value came from) --

WIFI_PSK_ENV = "FIELDNODE_WIFI_PSK"


def parse_host_port(text, what):
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_interval(text, what):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise UsageError(f"{what}: give 0 < seconds <= 86400, got {text!r}")
    return int(value) if value == int(value) else value


def read_thresholds(path, what):
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path} ({exc.strerror}): give a readable JSON file") from None
    except ValueError as exc:
        raise UsageError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what}: {path} must hold a JSON object such as "
                         '{"temperature_c": {"low": 2, "high": 8}}')
    return data


def read_psk(path, what):
    """The Wi-Fi passphrase from the first line of a file (never echoed), else $FIELDNODE_WIFI_PSK."""
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what}: cannot read {path} ({getattr(exc, 'strerror', None) or exc}): "
                             "give a readable file") from None
        return lines[0] if lines else ""
    return os.environ.get(WIFI_PSK_ENV)


def check_board_name(name, what):
    if name and name not in boards.names():
        raise UsageError(f"{what}: unknown board {name!r}: use one of {', '.join(boards.names())}")
    return name or None


def check_settings(fleet, node_id, settings):
    """Validate settings that can be checked without the board (when the board is named): the same
    config build provisioning does, with a placeholder key id."""
    if settings.board:
        # a virtual board tells its sensor bus when it is opened: stand in for it here
        build_config(fleet, node_id, 1, boards.load(settings.board), settings, {"i2c": "localhost:1"})
    elif settings.broker is None:
        _broker_defaults(fleet, settings)
