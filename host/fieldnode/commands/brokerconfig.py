"""`fieldnode broker-config`: the fleet's mosquitto configuration (mTLS, CRL, per-node ACL)."""
import json

from . import arg, command, fleet_arg
from .ca import operator_arg, passphrase_arg


@command("broker-config", "write a mosquitto config for the fleet: mTLS listeners for nodes and host tools, CRL, "
                          "an ACL per node")
@fleet_arg
@arg("--out", required=True, metavar="DIR", help="directory to write mosquitto.conf, acl, certificates, CRL into")
@arg("--port", type=int, default=8883, metavar="N", help="the nodes' listener port (default 8883)")
@arg("--host-port", type=int, default=8884, metavar="N",
     help="the host tools' listener port (monitor, ingest; default 8884)")
@arg("--bind", default="0.0.0.0", metavar="ADDR", help="listener address (default 0.0.0.0, all IPv4)")
@arg("--user", metavar="NAME", help="mosquitto's `user` directive (the account it runs as; it must own DIR)")
@arg("--log-file", metavar="FILE", help="mosquitto logs to FILE (default: stderr, e.g. the journal)")
@passphrase_arg
@operator_arg
@arg("--json", action="store_true", help="print the result as one JSON object")
def do_broker_config(args):
    from .. import ca
    from ..brokerconfig import write_broker_config
    from ..fleet import Fleet, resolve

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    res = write_broker_config(fleet, args.out, port=args.port, host_port=args.host_port, bind=args.bind,
                              run_as=args.user,
                              log_file=args.log_file, operator=args.operator,
                              passphrase=ca.read_passphrase(args.passphrase_file, prompt=True))
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    print("mosquitto config written to %s (nodes %s:%d, host tools :%d, %d node(s), CRL number %d with %d entr%s)"
          % (res["config"], res["bind"], res["port"], res["host_port"], len(res["nodes"]), res["crl_number"],
             res["crl_entries"], "y" if res["crl_entries"] == 1 else "ies"))
    print("start: mosquitto -c %s   (running already: kill -HUP <its pid> to reload)" % res["config"])
