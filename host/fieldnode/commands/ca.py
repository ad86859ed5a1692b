"""`fieldnode ca init`: the fleet CA, the host's client certificate and the broker's server certificate;
`fieldnode ca host-cert`: a new host certificate."""
import json

from . import arg, command, fleet_arg


def operator_arg(fn):
    return arg("--operator", metavar="NAME", help="who is doing this, for the audit trail (default: the OS user)")(fn)


def passphrase_arg(fn):
    return arg("--passphrase-file", metavar="FILE",
               help="the CA key's passphrase, first line of FILE (default: $FIELDNODE_CA_PASSPHRASE, "
                    "else a prompt on a terminal)")(fn)


@command("ca init", "create the fleet CA (ECDSA P-256), the host certificate and the broker's server certificate")
@fleet_arg
@passphrase_arg
@arg("--server-name", action="append", metavar="NAME",
     help="a host name the broker is reached by, in its certificate (repeatable; default localhost)")
@arg("--server-ip", action="append", metavar="IP",
     help="an IP address the broker is reached by, in its certificate (repeatable; default 127.0.0.1)")
@arg("--broker", metavar="HOST:PORT", help="record where nodes reach the broker (the default for provision)")
@operator_arg
@arg("--json", action="store_true", help="print the result as one JSON object")
def do_ca_init(args):
    from .. import ca
    from ..fleet import Fleet, resolve
    from ..provision import Action, parse_host_port

    fleet = Fleet(resolve(args.fleet))
    broker = parse_host_port(args.broker, "--broker") if args.broker else None
    names = args.server_name if args.server_name is not None else list(ca.DEFAULT_SERVER_NAMES)
    ips = args.server_ip if args.server_ip is not None else list(ca.DEFAULT_SERVER_IPS)
    if args.server_name is not None and args.server_ip is None:
        ips = []
    ca.check_server_names(names, ips)
    passphrase = ca.read_passphrase(args.passphrase_file)
    existed = fleet.root.is_dir()
    with Action(fleet, "ca init", None, args.operator) as act:
        if not existed:
            fleet.root.mkdir(mode=0o700, parents=True)
        result = ca.init(fleet, passphrase, names, ips, broker)
        act.hashes = {"ca": result["ca_fingerprint"], "host": result["host_fingerprint"],
                      "server": result["server_fingerprint"]}
        act.details = {k: result[k] for k in ("server_names", "server_ips", "passphrase_protected", "ca_not_after")}
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    print("fleet CA created in %s" % result["fleet"])
    print("  CA          sha256 %s, valid until %s%s" % (result["ca_fingerprint"], result["ca_not_after"],
                                                         "" if passphrase else " (key not passphrase-protected)"))
    print("  host        CN fieldnode-host, sha256 %s" % result["host_fingerprint"])
    print("  broker      %s, sha256 %s" % (", ".join(names + ips), result["server_fingerprint"]))
    print("next: fieldnode provision NODE_ID --port PORT ...   then fieldnode broker-config --out DIR")


@command("ca host-cert", "replace the host tools' certificate and key with a new self-signed pair "
                         "(renewal); then run broker-config and restart the broker")
@fleet_arg
@operator_arg
@arg("--json", action="store_true", help="print the result as one JSON object")
def do_ca_host_cert(args):
    from .. import ca
    from ..fleet import Fleet, resolve
    from ..provision import Action

    fleet = Fleet(resolve(args.fleet))
    fleet.require_ca()
    with Action(fleet, "ca host-cert", None, args.operator) as act:
        result = ca.renew_host_cert(fleet)
        act.hashes = {"host": result["host_fingerprint"]}
        act.details = {"host_not_after": result["host_not_after"]}
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    print("host certificate replaced: CN fieldnode-host, sha256 %s, valid until %s"
          % (result["host_fingerprint"], result["host_not_after"]))
    print("next: fieldnode broker-config --out DIR, then restart mosquitto so that it pins the new one "
          "(a reload does not re-read a listener's cafile)")
