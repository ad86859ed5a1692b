"""`fieldnode audit verify|show`: the fleet's hash-chained audit trail."""
import json

from . import arg, command, fleet_arg


def _fleet(args):
    from ..fleet import Fleet, resolve

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    return fleet


@command("audit verify", "check the audit trail's hash chain; names the first edited, removed or reordered record")
@fleet_arg
@arg("--json", action="store_true", help='one JSON object: {"ok", "records", "head"} or {"ok": false, "error"}')
def do_audit_verify(args):
    from .. import audit

    fleet = _fleet(args)
    try:
        n = audit.verify(fleet.root)
    except audit.AuditError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        raise
    head = audit.read(fleet.root)[-1]["hash"] if n else audit.GENESIS
    if args.json:
        print(json.dumps({"ok": True, "records": n, "head": head}))
    else:
        print("audit trail intact: %d record(s), head %s" % (n, head))


@command("audit show", "the audit trail, oldest first")
@fleet_arg
@arg("--node", metavar="NODE_ID", help="only records about this node")
@arg("--json", action="store_true", help="a JSON array of the records")
def do_audit_show(args):
    from .. import audit

    records = audit.read(_fleet(args).root, node=args.node)
    if args.json:
        print(json.dumps(records, sort_keys=True))
        return
    fmt = "%5s  %-25s  %-12s  %-13s  %-20s  %s"
    print(fmt % ("SEQ", "TIME (UTC)", "OPERATOR", "ACTION", "NODE", "RESULT"))
    for r in records:
        if "corrupt" in r:
            print("%5s  (not a valid record: run `fieldnode audit verify`)" % "?")
            continue
        print(fmt % (r.get("seq"), r.get("time"), r.get("operator"), r.get("action"), r.get("node") or "-",
                     r.get("result")))
