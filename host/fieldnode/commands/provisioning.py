"""`fieldnode provision`, `rotate` and `revoke`: a node's identity, on the board and in the inventory."""
import json
import sys

from . import arg, command, fleet_arg
from .ca import operator_arg, passphrase_arg
from ..errors import UsageError


def settings_args(fn):
    """The options that make a node's config (also the defaults of a batch's CSV cells)."""
    for names, kw in reversed([
        (("--board",), dict(metavar="B", help="board name from boards/ (default: detected from the board)")),
        (("--broker",), dict(metavar="HOST:PORT", help="where the node reaches the broker (default: the fleet's)")),
        (("--server-name",), dict(metavar="NAME", help="the name on the broker's certificate, if not HOST")),
        (("--wifi-ssid",), dict(metavar="S", help="Wi-Fi network (ESP32 boards)")),
        (("--wifi-psk-file",), dict(metavar="F", help="Wi-Fi passphrase, first line of F (default: "
                                                      "$FIELDNODE_WIFI_PSK; never on the command line)")),
        (("--interval",), dict(metavar="S", help="seconds between readings (default 10)")),
        (("--thresholds",), dict(metavar="FILE.json", help="alarm limits per channel, as in node/config.py")),
        (("--bench-i2c",), dict(metavar="HOST:PORT", help="unix board: the bench's emulated sensor bus")),
        (("--bench-bus",), dict(metavar="NAME", help="unix board: bus name on the bench (default: the node id)")),
    ]):
        fn = arg(*names, **kw)(fn)
    return fn


def _settings(args):
    from ..provision import (Settings, check_board_name, parse_host_port, parse_interval, read_psk,
                             read_thresholds)

    return Settings(
        board=check_board_name(args.board, "--board"),
        broker=parse_host_port(args.broker, "--broker") if args.broker else None,
        server_name=args.server_name,
        wifi_ssid=args.wifi_ssid,
        wifi_psk=read_psk(args.wifi_psk_file, "--wifi-psk-file") if (args.wifi_ssid or args.wifi_psk_file) else None,
        interval_s=parse_interval(args.interval, "--interval") if args.interval is not None else None,
        thresholds=read_thresholds(args.thresholds, "--thresholds") if args.thresholds else None,
        bench_i2c=args.bench_i2c, bench_bus=args.bench_bus)


def _print_result(res, as_json):
    if as_json:
        print(json.dumps(res, sort_keys=True), flush=True)
        return
    what = "rotated keys of" if res["result"] == "rotated" else "provisioned"
    print("%s %s on %s (%s%s)%s" % (what, res["node_id"], res["port"], res["board"],
                                    ", MAC " + res["mac"] if res["mac"] else "",
                                    " — resumed an interrupted run" if res["resumed"] else ""))
    print("  certificate  serial %s, valid until %s" % (res["cert_serial"], res["cert_not_after"]))
    print("               sha256 %s" % res["cert_fingerprint"])
    print("  payload key  id %d%s" % (res["key_id"], "" if res["previous_key_id"] is None else
                                      " (id %d accepted until %s)" % (res["previous_key_id"],
                                                                     res["previous_key_accepted_until"] or "now")))
    print("  config.json  sha256 %s; %d file(s) written, all verified" % (res["config_sha256"], len(res["written"])))
    for w in res["warnings"]:
        print("  warning: " + w)
    if res["reset"]:
        print("  the board was reset and starts with its new identity")


def _overlap_args(fn):
    fn = arg("--overlap-days", type=int, default=None, metavar="N",
             help="keep accepting the old payload key (and certificate) for N days (default 7)")(fn)
    fn = arg("--revoke-old", action="store_true",
             help="revoke the old certificate and payload key at once (needs the CA key)")(fn)
    return fn


@command("provision", "give a node its certificate, payload key and config on its board (or --batch CSV)")
@fleet_arg
@arg("node_id", nargs="?", metavar="NODE_ID", help="the node id: 1-32 of A-Z a-z 0-9 _ -")
@arg("--port", metavar="PORT", help="the board's serial port (MicroPython REPL)")
@settings_args
@arg("--batch", metavar="CSV", help="provision every row of CSV (columns: node_id, port, board, ...)")
@arg("--jobs", type=int, default=1, metavar="N", help="with --batch: boards provisioned at once (default 1)")
@arg("--rotate", action="store_true", help="a node already provisioned gets new keys instead of an error")
@_overlap_args
@arg("--no-reset", action="store_true", help="do not reset the board afterwards")
@passphrase_arg
@operator_arg
@arg("--json", action="store_true", help="JSON result (with --batch: one JSON line per row, then a summary)")
def do_provision(args):
    from .. import ca
    from ..fleet import Fleet, resolve
    from ..provision import DEFAULT_OVERLAP_DAYS, provision

    fleet = Fleet(resolve(args.fleet))
    overlap = DEFAULT_OVERLAP_DAYS if args.overlap_days is None else args.overlap_days
    if (args.overlap_days is not None or args.revoke_old) and not args.rotate:
        raise UsageError("--overlap-days and --revoke-old go with --rotate (or use `fieldnode rotate`)")
    if args.batch:
        if args.node_id or args.port:
            raise UsageError("--batch takes node ids and ports from the CSV: drop NODE_ID and --port")
        return _batch(args, fleet, overlap)
    if not args.node_id or not args.port:
        raise UsageError("give NODE_ID and --port PORT (or --batch CSV)")
    if args.jobs != 1:
        raise UsageError("--jobs goes with --batch")
    fleet.require_ca()
    settings = _settings(args)
    res = provision(fleet, args.node_id, args.port, settings, rotate=args.rotate, operator=args.operator,
                    passphrase=ca.read_passphrase(args.passphrase_file, prompt=True), reset=not args.no_reset,
                    overlap_days=overlap, revoke_old=args.revoke_old)
    _print_result(res, args.json)


def _batch(args, fleet, overlap):
    from .. import ca
    from ..batch import read_csv, run_batch

    if not 1 <= args.jobs <= 64:
        raise UsageError("--jobs: give 1 to 64")
    fleet.require_ca()
    rows = read_csv(args.batch, fleet, _settings(args))
    passphrase = ca.read_passphrase(args.passphrase_file, prompt=True)
    # Our own handle on stdout: a board session in a worker thread may swap sys.stdout for a moment
    # (mpremote's chatter is silenced that way), and the report must not go there.
    out = sys.stdout

    def on_result(report):
        if args.json:
            print(json.dumps(report, sort_keys=True), file=out, flush=True)
            return
        line = "row %d %s on %s: %s" % (report["row"], report["node_id"], report["port"], report["result"])
        if report["result"] == "failed":
            line += " — " + report["error"]
        elif report["result"] == "skipped":
            line += " (%s)" % report["reason"]
        else:
            line += " (certificate %s…%s)" % (report["cert_serial"][:12], ", resumed" if report["resumed"] else "")
        print(line, file=out, flush=True)

    summary = run_batch(fleet, rows, csv_path=args.batch, rotate=args.rotate, jobs=args.jobs,
                        operator=args.operator, passphrase=passphrase, reset=not args.no_reset,
                        overlap_days=overlap, revoke_old=args.revoke_old, on_result=on_result)
    if args.json:
        print(json.dumps(summary, sort_keys=True), file=out, flush=True)
    else:
        print("%d rows: %d provisioned, %d rotated, %d skipped, %d failed" % (
            summary["rows"], summary["provisioned"], summary["rotated"], summary["skipped"], summary["failed"]),
            file=out, flush=True)
        if summary["failed"]:
            print("fieldnode: %d row(s) failed: fix them and run the same command again (finished rows are "
                  "skipped)" % summary["failed"], file=sys.stderr)
    return 0 if summary["ok"] else 1


@command("rotate", "new device key and certificate and a new payload key id for a provisioned node")
@fleet_arg
@arg("node_id", metavar="NODE_ID")
@arg("--port", required=True, metavar="PORT", help="the node's board (its serial port)")
@_overlap_args
@arg("--no-reset", action="store_true", help="do not reset the board afterwards")
@passphrase_arg
@operator_arg
@arg("--json", action="store_true", help="print the result as one JSON object")
def do_rotate(args):
    from .. import ca
    from ..fleet import Fleet, resolve
    from ..provision import DEFAULT_OVERLAP_DAYS, rotate

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    res = rotate(fleet, args.node_id, args.port, operator=args.operator,
                 passphrase=ca.read_passphrase(args.passphrase_file, prompt=True), reset=not args.no_reset,
                 overlap_days=DEFAULT_OVERLAP_DAYS if args.overlap_days is None else args.overlap_days,
                 revoke_old=args.revoke_old)
    _print_result(res, args.json)


@command("revoke", "revoke a node: its certificates on the CRL, its payload keys no longer accepted")
@fleet_arg
@arg("node_id", metavar="NODE_ID")
@arg("--reason", metavar="TEXT", help="why, for the audit trail")
@passphrase_arg
@operator_arg
@arg("--json", action="store_true", help="print the result as one JSON object")
def do_revoke(args):
    from .. import ca
    from ..fleet import Fleet, resolve
    from ..provision import revoke

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    res = revoke(fleet, args.node_id, operator=args.operator, reason=args.reason,
                 passphrase=ca.read_passphrase(args.passphrase_file, prompt=True))
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    if res["already"]:
        print("%s was already revoked; CRL rewritten (%s, number %d)" % (res["node_id"], res["crl"], res["crl_number"]))
    else:
        print("revoked %s: %d certificate(s) added to the CRL (%s, number %d); its payload keys are no longer "
              "accepted" % (res["node_id"], len(res["revoked_serials"]), res["crl"], res["crl_number"]))
    config_dir = fleet.broker_info().get("config_dir")
    print("next: fieldnode broker-config --out %s, then reload mosquitto (SIGHUP) so new connections see it"
          % (config_dir or "DIR"))


@command("bringup", "flash MicroPython, deploy the node firmware and provision the node: the one-liner")
@fleet_arg
@arg("node_id", metavar="NODE_ID")
@arg("--port", required=True, metavar="PORT", help="the board's serial port (ROM loader for flashing)")
@arg("--firmware", required=True, metavar="FILE.bin", help="the MicroPython .bin for the board's chip")
@arg("--repl-port", metavar="PORT", help="MicroPython's port after flashing (default: --port; the bench has two)")
@settings_args
@arg("--erase", action="store_true", help="erase the whole flash first")
@arg("--skip-flash", action="store_true", help="MicroPython is already on the board: deploy and provision only")
@arg("--rotate", action="store_true", help="the node is already provisioned: bring it up with new keys")
@passphrase_arg
@operator_arg
@arg("--json", action="store_true", help='one JSON object {"node_id", "flash", "deploy", "provision"}')
def do_bringup(args):
    from .. import ca
    from ..bringup import bringup
    from ..fleet import Fleet, resolve
    from ..progress import Progress

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    settings = _settings(args)
    bars = {}

    def progress(name):
        def update(done, total):
            if name not in bars:
                bars[name] = Progress(total, name)
            bars[name].update(done)
            if done >= total:
                bars.pop(name).close()
        return update

    steps = []
    try:
        res = bringup(fleet, args.node_id, args.port, args.firmware, settings, repl_port=args.repl_port,
                      operator=args.operator, erase=args.erase, skip_flash=args.skip_flash, rotate=args.rotate,
                      passphrase=ca.read_passphrase(args.passphrase_file, prompt=True),
                      flash_progress=progress("flashing"), deploy_progress=progress("deploying"),
                      on_step=steps.append)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(res, sort_keys=True, default=str))
        return
    if res["flash"]:
        f = res["flash"]
        print("flashed   %s %s on %s: %d bytes at %#x, verified" % (f["chip"], f["mac"], f["port"],
                                                                     f["bytes_written"], f["offset"]))
    d = res["deploy"]
    print("deployed  app %s…: %d file(s) copied, %d already there" % (d["app_sha256"][:16], len(d["files_copied"]),
                                                                      len(d["files_skipped"])))
    _print_result(res["provision"], False)
