"""Build a node's config.json on the host, validated by the very parser the node runs (node/config.py)."""
import importlib.util
import sys

from . import paths
from .errors import FieldnodeError


def _firmware_config_module():
    # The firmware's parser is plain Python that also runs on CPython; load it from the firmware tree
    # so the host and the node can never disagree on what a valid config is.
    name = "_fieldnode_firmware_config"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, paths.FIRMWARE / "node" / "config.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


def build(node_id, key_id, broker_host, broker_port, board, interval_s=10, thresholds=None,
          calibration=None, sensor=None, wifi=None, bench=None, server_name=None):
    cfg = {
        "node_id": node_id,
        "key_id": key_id,
        "broker": {"host": broker_host, "port": broker_port, "keepalive_s": 60},
        "interval_s": interval_s,
        "thresholds": thresholds or {},
        "calibration": calibration or {},
        "sensor": dict({"address": board.get("sensor", {}).get("address", 0x76)}, **(sensor or {})),
        "files": {"ca": "ca.der", "cert": "node.der", "key": "node.key.der", "payload_key": "payload.key"},
        "board": board,
    }
    if server_name:
        cfg["broker"]["server_name"] = server_name
    if wifi:
        cfg["wifi"] = wifi
    if bench:
        cfg["bench"] = bench
    validate(cfg)
    return cfg


def validate(cfg):
    mod = _firmware_config_module()
    try:
        mod.parse(cfg)
    except mod.ConfigError as exc:
        raise FieldnodeError(f"invalid node config: {exc}") from None
