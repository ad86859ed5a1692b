"""`fieldnode inventory list|show`: what the fleet knows about its nodes."""
import json

from . import arg, command, fleet_arg


def _open(args):
    from ..fleet import Fleet, resolve
    from ..inventory import Inventory

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    return fleet, Inventory(fleet.inventory_db)


@command("inventory list", "every node: status, board, MAC, key id, certificate expiry")
@fleet_arg
@arg("--json", action="store_true", help="a JSON array of node records")
def do_inventory_list(args):
    fleet, inv = _open(args)
    with inv:
        nodes = inv.nodes()
    if args.json:
        print(json.dumps(nodes, sort_keys=True))
        return
    if not nodes:
        print("no nodes yet: fieldnode provision NODE_ID --port PORT")
        return
    fmt = "%-20s %-11s %-20s %-17s %6s  %-25s  %s"
    print(fmt % ("NODE", "STATUS", "BOARD", "MAC", "KEY ID", "CERTIFICATE EXPIRES", "UPDATED"))
    for n in nodes:
        print(fmt % (n["node_id"], n["status"], n["board"] or "-", n["mac"] or "-",
                     "-" if n["key_id"] is None else n["key_id"], n["cert_not_after"] or "-", n["updated_at"]))


@command("inventory show", "one node in full: certificates, payload keys (ids and state only), file hashes")
@fleet_arg
@arg("node_id", metavar="NODE_ID")
@arg("--json", action="store_true", help="one JSON object")
def do_inventory_show(args):
    from ..errors import FieldnodeError
    from ..fleet import parse_iso, utcnow

    fleet, inv = _open(args)
    with inv:
        node = inv.get(args.node_id)
        if node is None:
            raise FieldnodeError(f"unknown node {args.node_id!r}: see `fieldnode inventory list`")
        certs = inv.certificates(subject=args.node_id, kind="node")
    now = utcnow()
    keys = []
    for key_id, rec in sorted(fleet.key_records(args.node_id).items()):
        accepted = not rec.get("revoked") and (rec.get("not_after") is None or now < parse_iso(rec["not_after"]))
        keys.append({"key_id": key_id, "created": rec.get("created"), "not_after": rec.get("not_after"),
                     "revoked": rec.get("revoked"), "accepted": accepted})
    record = dict(node, certificates=certs, payload_keys=keys)
    if args.json:
        print(json.dumps(record, sort_keys=True))
        return
    for k in ("node_id", "status", "board", "mac", "port", "key_id", "cert_serial", "cert_fingerprint",
              "cert_not_after", "config_sha256", "operator", "created_at", "provisioned_at", "rotated_at",
              "revoked_at", "updated_at"):
        print("%-17s %s" % (k, "-" if node[k] is None else node[k]))
    print("files on the board (sha256):")
    for name, digest in sorted(node["files"].items()):
        print("  %-22s %s" % (name, digest))
    print("certificates:")
    for c in certs:
        extra = (" until %s" % c["revoke_after"]) if c["status"] == "superseded" else (
            " at %s" % c["revoked_at"] if c["revoked_at"] else "")
        print("  %s  %-10s%s  valid until %s  key id %s" % (c["serial"], c["status"], extra, c["not_after"],
                                                           c["key_id"]))
    print("payload keys:")
    for k in keys:
        state = "accepted" if k["accepted"] else ("revoked" if k["revoked"] else "expired")
        limit = " until %s" % k["not_after"] if k["not_after"] and k["accepted"] else ""
        print("  id %-5d %s%s" % (k["key_id"], state, limit))
