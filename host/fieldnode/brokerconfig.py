"""`fieldnode broker-config`: a mosquitto 2.0 configuration for the fleet, written into one directory.

DIR/mosquitto.conf  two TLS listeners, client certificate required, CN as username: the nodes' (fleet CA,
                    the CRL, the CN as client id too, so no node can take over another's session) and the
                    host tools' (only the fleet's self-signed host certificate, pinned)
DIR/acl             each node not revoked writes only under fieldnode/<id>/, the host reads fieldnode/#
DIR/ca.pem DIR/host.pem DIR/server.pem DIR/server.key (0600) DIR/crl.pem   what the listeners load

The renderer is the bench broker's (fieldnode.bench.broker.render_config / render_acl), so the bench and
a production broker run the very same configuration. The CRL is rebuilt from the inventory on every run
(that also puts rotated-out certificates on it once their overlap has ended, and renews its 30-day
validity: run this at least monthly, and after every `fieldnode revoke`, then reload mosquitto with
SIGHUP — the CRL applies to new connections).
"""
from pathlib import Path

from . import pki
from .bench.broker import render_acl, render_config
from .ca import CA, crl_lock, host_cert_problem
from .fleet import iso, utcnow
from .inventory import Inventory
from .errors import FieldnodeError, UsageError
from .provision import Action, sha256

DEFAULT_PORT = 8883
DEFAULT_HOST_PORT = 8884
DEFAULT_BIND = "0.0.0.0"


def write_broker_config(fleet, out, port=DEFAULT_PORT, host_port=DEFAULT_HOST_PORT, bind=DEFAULT_BIND,
                        run_as=None, log_file=None, operator=None, passphrase=None, ca_loader=None):
    """Write the broker's files into `out`; return a summary (nodes served, CRL number, file hashes)."""
    for option, value in (("--port", port), ("--host-port", host_port)):
        if not 0 < int(value) < 65536:
            raise UsageError(f"{option}: give 1-65535")
    if int(port) == int(host_port):
        raise UsageError("--port and --host-port: the nodes and the host tools need a listener each; "
                         "give two different ports")
    fleet.require_ca()
    fleet.require(fleet.server_cert, fleet.server_key, fleet.host_cert)
    problem = host_cert_problem(fleet)
    if problem:
        raise FieldnodeError(problem)
    out = Path(out).resolve()
    ca_loader = ca_loader or (lambda: CA.load(fleet, passphrase))
    with Action(fleet, "broker-config", None, operator) as act:
        act.details = {"out": str(out), "port": int(port), "host_port": int(host_port), "bind": bind}
        with Inventory(fleet.inventory_db) as inv:
            ca = ca_loader()
            with crl_lock(fleet):
                crl_path, number, revoked = ca.write_crl(inv)
            nodes = [n["node_id"] for n in inv.nodes(include_revoked=False)]
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {
            "ca.pem": (fleet.ca_cert.read_bytes(), 0o644),
            "host.pem": (fleet.host_cert.read_bytes(), 0o644),
            "server.pem": (fleet.server_cert.read_bytes(), 0o644),
            "server.key": (fleet.server_key.read_bytes(), 0o600),
            "crl.pem": (crl_path.read_bytes(), 0o644),
            "acl": (render_acl(nodes).encode(), 0o644),
        }
        # Persistence on: ingest's QoS 1 session and the messages queued for it must survive a broker
        # restart, or nodes that reconnect first get PUBACKs for messages nobody will receive
        # (measured: docs/reliability.md, broker-outage with broker_persistence=false).
        (out / "persist").mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = render_config(port, out / "ca.pem", out / "server.pem", out / "server.key", out / "acl",
                             host_port=host_port, host_cafile=out / "host.pem",
                             crlfile=out / "crl.pem", log_file=log_file, bind=bind, run_as=run_as,
                             persistence_dir=out / "persist")
        # The listener's files first, the config last: a broker (re)started at any moment finds a whole set.
        for name, (data, mode) in files.items():
            pki.atomic_write(out / name, data, mode)
        pki.atomic_write(out / "mosquitto.conf", conf.encode(), 0o644)
        hashes = {name: sha256(data) for name, (data, _) in files.items() if name != "server.key"}
        hashes["mosquitto.conf"] = sha256(conf.encode())
        act.hashes = hashes
        act.details.update({"nodes": nodes, "crl_number": number, "crl_entries": len(revoked)})
        fleet.save_broker(config_dir=str(out), host_port=int(host_port))
    return {"out": str(out), "config": str(out / "mosquitto.conf"), "port": int(port),
            "host_port": int(host_port), "bind": bind,
            "nodes": nodes, "crl_number": number, "crl_entries": len(revoked), "written_at": iso(utcnow()),
            "sha256": hashes}
