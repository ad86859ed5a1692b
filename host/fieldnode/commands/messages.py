"""Reading sealed messages: decode one, or monitor the fleet live."""
import json
import sys
import threading

from .. import protocol
from ..errors import UsageError
from . import arg, command, fleet_arg


def _hex_key(text):
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError("--key: not hex; give the 32-byte payload key as 64 hex digits") from None
    if len(key) != protocol.KEY_SIZE:
        raise UsageError("--key: %d bytes; the payload key is 32 bytes (64 hex digits)" % len(key))
    return key


@command("decode", "open a sealed message with the node's payload key and print it as one JSON object")
@arg("payload", metavar="PAYLOAD_HEX", help="the sealed message, in hex")
@arg("--key", required=True, metavar="HEX", help="payload master key (64 hex digits)")
@arg("--node", required=True, metavar="NODE_ID", help="the node the message came from (its topic)")
@arg("--key-id", type=int, metavar="N", help="the key's id (default: whatever the message header names)")
def do_decode(args):
    key = _hex_key(args.key)
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
    opened = protocol.open_message(message, args.node, {key_id: key})
    print(json.dumps(opened.as_dict(), sort_keys=True))


def _broker_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError("--broker: expected HOST:PORT, got %r" % text)
    return host, int(port)


@command("monitor", "subscribe with the host certificate, verify and open every message, print a live table")
@fleet_arg
@arg("--broker", metavar="HOST:PORT", help="broker address (default: the one recorded in the fleet)")
@arg("--json", action="store_true", help="one JSON object per verified message")
@arg("--count", type=int, metavar="N", help="stop after N verified messages")
def do_monitor(args):
    from .. import demo
    from ..fleet import Fleet, KeyRing, resolve
    from ..monitor import Monitor

    fleet = Fleet(resolve(args.fleet))
    fleet.require(fleet.ca_cert, fleet.host_cert, fleet.host_key)
    host, port = _broker_address(args.broker) if args.broker else fleet.broker()
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


