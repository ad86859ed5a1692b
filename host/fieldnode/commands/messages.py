"""Reading sealed messages: decode one, or monitor the fleet live."""
import json
import sys
import threading

from .. import protocol
from ..errors import FieldnodeError, UsageError
from . import arg, command, fleet_arg


def _hex_key(text, option="--key"):
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise UsageError("%s: not hex; give the 32-byte payload key as 64 hex digits" % option) from None
    if len(key) != protocol.KEY_SIZE:
        raise UsageError("%s: %d bytes; the payload key is 32 bytes (64 hex digits)" % (option, len(key)))
    return key


def _key_file(path):
    """A key file: 64 hex digits (surrounding whitespace allowed), or the 32 raw bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise UsageError("--key-file %s: cannot read it (%s)" % (path, exc.strerror or exc)) from None
    text = data.strip()
    if len(data) == protocol.KEY_SIZE and not all(c in b"0123456789abcdefABCDEF" for c in text):
        return data  # the raw bytes (hex text is taken as hex, whatever its length)
    return _hex_key(text.decode("ascii", "replace"), "--key-file %s" % path)


def _decode_keys(args, key_id):
    """{key_id: master} from --key, --key-file, or else the fleet's key ring (the keys accepted now)."""
    if args.key is not None and args.key_file is not None:
        raise UsageError("--key and --key-file: give one of them")
    if args.include_inactive and (args.key is not None or args.key_file is not None):
        raise UsageError("--include-inactive is about the fleet's keys: leave it out with --key or --key-file")
    if args.key is not None:
        return {key_id: _hex_key(args.key)}
    if args.key_file is not None:
        return {key_id: _key_file(args.key_file)}
    from ..fleet import Fleet, KeyRing, resolve

    fleet = Fleet(resolve(args.fleet))
    if args.include_inactive:
        records = fleet.key_records(args.node)  # this node's file only
        try:
            keys = {k: bytes.fromhex(r["key"]) for k, r in records.items()} or None
        except (KeyError, TypeError, ValueError):
            raise FieldnodeError("%s: unreadable payload keys: restore it from backup"
                                 % fleet.key_file(args.node)) from None
    else:
        keys = KeyRing(fleet).get(args.node)
        record = fleet.key_records(args.node).get(key_id)
        if record is not None and key_id not in (keys or {}):
            # a key the host no longer accepts: say so rather than "unknown key id"
            why = ("revoked %s" % record["revoked"] if record.get("revoked")
                   else "retired after its overlap, %s" % record.get("not_after"))
            raise FieldnodeError("key id %d of node %s was %s, and the host no longer accepts it: to open a "
                                 "message sealed with it on purpose, add --include-inactive" % (key_id, args.node, why))
    if keys is None:
        raise UsageError("no payload key for node %s in the fleet at %s: give --key-file (or --fleet)"
                         % (args.node, fleet.root))
    return keys


@command("decode", "open a sealed message with the node's payload key and print it as one JSON object")
@arg("payload", metavar="PAYLOAD_HEX", help="the sealed message, in hex")
@arg("--node", required=True, metavar="NODE_ID", help="the node the message came from (its topic)")
@arg("--key", metavar="HEX", help="payload master key (64 hex digits); visible to other users in the process "
                                  "list: prefer --key-file or the fleet")
@arg("--key-file", metavar="FILE", help="a file holding the payload master key (64 hex digits, or 32 bytes)")
@fleet_arg
@arg("--key-id", type=int, metavar="N", help="the key's id (default: whatever the message header names)")
@arg("--include-inactive", action="store_true",
     help="with the fleet's keys: also those retired or revoked (old messages, on purpose)")
def do_decode(args):
    """Without --key or --key-file, the node's keys come from the fleet directory: those accepted now, or
    with --include-inactive also the retired and revoked ones."""
    try:
        protocol.check_node_id(args.node)
    except ValueError as exc:
        raise UsageError("--node: %s" % exc) from None
    try:
        message = bytes.fromhex(args.payload)
    except ValueError:
        raise protocol.ProtocolError("malformed", "PAYLOAD_HEX is not hex") from None
    key_id = args.key_id
    if key_id is None:
        key_id = protocol.parse_header(message)[2]
    keys = _decode_keys(args, key_id)
    if args.key_id is not None:
        keys = {k: v for k, v in keys.items() if k == args.key_id}
    opened = protocol.open_message(message, args.node, keys)
    print(json.dumps(opened.as_dict(), sort_keys=True))


def _broker_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError("--broker: expected HOST:PORT, got %r" % text)
    return host, int(port)


@command("monitor", "subscribe with the host certificate, verify and open every message, print a live table")
@fleet_arg
@arg("--broker", metavar="HOST:PORT", help="the broker's host listener (default: the one recorded in the fleet)")
@arg("--json", action="store_true", help="one JSON object per verified message")
@arg("--count", type=int, metavar="N", help="stop after N verified messages")
def do_monitor(args):
    from .. import demo
    from ..fleet import Fleet, KeyRing, resolve
    from ..monitor import Monitor

    fleet = Fleet(resolve(args.fleet))
    fleet.require(fleet.ca_cert, fleet.host_cert, fleet.host_key)
    host, port = _broker_address(args.broker) if args.broker else fleet.host_broker()
    done = threading.Event()
    seen = [0]

    def on_message(opened, payload):
        print(json.dumps(opened.as_dict(), sort_keys=True) if args.json else demo.format_row(opened), flush=True)
        seen[0] += 1
        if args.count and seen[0] >= args.count:
            done.set()

    def on_reject(node, topic, reason, payload):
        print("fieldnode: rejected message on %s: %s" % (topic, reason), file=sys.stderr, flush=True)

    if not args.json:
        print(demo.HEADER, flush=True)
    with Monitor(host, port, fleet.ca_cert, fleet.host_cert, fleet.host_key, KeyRing(fleet),
                 on_message=on_message, on_reject=on_reject):
        done.wait()


