"""Keeping the fleet's messages: `fieldnode ingest` into SQLite, `fieldnode gaps` from it."""
import json
import signal
import sqlite3
import sys
import threading
from pathlib import Path

from .. import pki
from ..errors import FieldnodeError, UsageError
from . import arg, command, fleet_arg
from .messages import _broker_address

DB_NAME = "ingest.sqlite"


def _db_path(args, fleet):
    return args.db or fleet.root / DB_NAME


def _summary(stats):
    by_reason = ", ".join("%s %d" % kv for kv in stats["rejected_by_reason"].items())
    return ("%d stored, %d duplicates (%d replays), %d conflicts, %d rejected%s, %d missing"
            % (stats["stored"], stats["duplicates"], stats["replays"], stats["conflicts"], stats["rejected"],
               " (%s)" % by_reason if by_reason else "", stats["missing"]))


def _event_line(event, as_json):
    """(text, to_stderr) for an ingest event, or None to print nothing."""
    from .. import demo

    kind, opened = event.kind, event.opened
    if as_json:
        d = {"event": kind, "node": event.node, "topic": event.topic, "received_at": event.received_at}
        if opened is not None:
            d.update(opened.as_dict())
        if event.reason is not None:
            d["text" if kind == "status" else "reason"] = event.reason
        return json.dumps(d, sort_keys=True), False
    if kind == "stored":
        return demo.format_row(opened), False
    if kind == "duplicate":
        what = "replay" if event.reason else "duplicate"
        return "fieldnode: %s of %s seq %d not stored again" % (what, event.node, opened.seq), True
    if kind == "conflict":
        return ("fieldnode: CONFLICT %s seq %d: a different message that also verifies (leaked key or node "
                "bug): the first is kept, this one is in the conflicts table" % (event.node, opened.seq)), True
    if kind == "rejected":
        return "fieldnode: rejected message on %s: %s" % (event.topic, event.reason), True
    return None  # status, and error (reported once, when ingest stops)


@command("ingest", "keep every verified message in SQLite once (deduplicated), log every rejected one")
@fleet_arg
@arg("--db", metavar="PATH", help="SQLite database (default: <fleet>/ingest.sqlite)")
@arg("--broker", metavar="HOST:PORT", help="the broker's host listener (default: the one recorded in the fleet)")
@arg("--json", action="store_true", help="one JSON object per event (stored, duplicate, conflict, rejected, status)")
@arg("--count", type=int, metavar="N", help="stop after N newly stored messages")
@arg("--client-id", default=None, metavar="ID",
     help="MQTT client id of the persistent session, starting fieldnode- (default fieldnode-ingest; one "
          "ingest per id)")
def do_ingest(args):
    from ..fleet import Fleet, KeyRing, resolve
    from ..ingest import CLIENT_ID, Ingestor, IngestStore

    if args.count is not None and args.count < 1:
        raise UsageError("--count: give a positive number of messages")
    if args.client_id is not None:
        try:
            pki.check_host_name(args.client_id)
        except UsageError:
            raise UsageError("--client-id %r: start it with %r (then A-Z a-z 0-9 _ -, 32 characters at most): "
                             "no node id does, so no node can take the session over"
                             % (args.client_id, pki.HOST_PREFIX)) from None
    fleet = Fleet(resolve(args.fleet))
    fleet.require(fleet.ca_cert, fleet.host_cert, fleet.host_key)
    host, port = _broker_address(args.broker) if args.broker else fleet.host_broker()
    done = threading.Event()
    stored = [0]
    out_lock = threading.Lock()

    def on_event(event):
        line = _event_line(event, args.json)
        if line is not None:
            text, to_stderr = line
            with out_lock:
                print(text, file=sys.stderr if to_stderr else sys.stdout, flush=True)
        if event.kind == "stored":
            stored[0] += 1
            if args.count and stored[0] >= args.count:
                done.set()
        elif event.kind == "error":
            done.set()

    def terminate(signum, frame):
        raise KeyboardInterrupt

    db = Path(_db_path(args, fleet))
    created = not db.exists()
    store = IngestStore(db)
    try:
        ingestor = Ingestor(store, host, port, fleet.ca_cert, fleet.host_cert, fleet.host_key, KeyRing(fleet),
                            client_id=args.client_id or CLIENT_ID, on_event=on_event)
        ingestor.start()
    except BaseException:
        store.close()
        if created:  # a failed start leaves nothing behind
            for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                p.unlink(missing_ok=True)
        raise
    previous = signal.signal(signal.SIGTERM, terminate)  # a service manager's stop: commit, then go
    try:
        done.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            ingestor.stop()
            if not args.json:
                print("fieldnode: ingest stopped: %s; %s" % (_summary(store.stats()), store.path),
                      file=sys.stderr, flush=True)
        except sqlite3.Error:
            pass  # the store's own failure is what ingestor.error reports below
        finally:
            store.close()
    if ingestor.error:
        raise FieldnodeError(ingestor.error + ": fix that and start ingest again (nothing unstored was "
                             "acknowledged; the broker still holds it)")


@command("gaps", "list the missing sequence numbers of each node in the ingest database")
@fleet_arg
@arg("--db", metavar="PATH", help="SQLite database (default: <fleet>/ingest.sqlite)")
@arg("--node", metavar="NODE_ID", help="only this node")
@arg("--json", action="store_true", help="one JSON object per missing range")
def do_gaps(args):
    from ..fleet import Fleet, resolve
    from ..ingest import IngestStore

    fleet = Fleet(resolve(args.fleet))
    with IngestStore(_db_path(args, fleet), readonly=True) as store:
        stats = store.stats()
        if args.node is not None and args.node not in stats["nodes"]:
            raise FieldnodeError("no messages from node %r in %s: check the node id (fieldnode gaps lists "
                                 "every node without --node)" % (args.node, store.path))
        gaps = store.gap_report(args.node)
    if args.json:
        for g in gaps:
            print(json.dumps(g, sort_keys=True))
        return
    nodes = [args.node] if args.node else [n for n, d in stats["nodes"].items() if n and d["stored"]]
    if not nodes:
        print("no messages stored yet")
        return
    for node in nodes:
        d = stats["nodes"][node]
        print("%s: %d stored up to seq %d, %s" % (node, d["stored"], d["high_water"],
                                                  "%d missing:" % d["missing"] if d["missing"] else "nothing missing"))
        for g in gaps:
            if g["node"] != node:
                continue
            span = "seq %d" % g["first"] if g["count"] == 1 else "seq %d-%d (%d)" % (g["first"], g["last"], g["count"])
            if g["boot_before"] is not None and g["boot_before"] != g["boot_after"]:
                span += " across a restart (boot %d -> %d)" % (g["boot_before"], g["boot_after"])
            print("  " + span)
