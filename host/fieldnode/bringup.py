"""`fieldnode bringup`: the technician's one-liner — flash MicroPython, deploy the node firmware,
provision the node — with every step checked before the first one starts.

    result = bringup(fleet, "cold-room-3", "/dev/ttyUSB0", "ESP32_GENERIC-v1.24.1.bin",
                     Settings(board="esp32-devkitc", wifi_ssid="plant", wifi_psk="..."))

On a real board the ROM loader (flashing) and MicroPython's REPL (deploying, provisioning) are the same
serial port: after flashing, the board resets into MicroPython there. On the bench they are two emulators
(`fieldnode vbootloader`, `fieldnode vboard`), hence `repl_port` (default: `port`).

What could stop the run halfway is checked first, so that no board is flashed for nothing: the node id,
the fleet's CA, the node's state in the inventory (not revoked; not provisioned unless `rotate`), the
firmware image, and the settings (the config is built and validated when the board is named). Each step
keeps its own audit record (flash, deploy, provision) and one `bringup` record closes the run. Re-running
a bringup that stopped is safe: flashing and deploying again are harmless, and provisioning resumes with
the key material already issued (`skip_flash` saves the first step when MicroPython is already on).
"""
import time

from . import boards, pki
from .errors import FieldnodeError
from .inventory import Inventory
from .provision import (Action, AlreadyProvisioned, RevokedNode, Settings, check_settings, provision)

REPL_WAIT_S = 20.0  # after flashing: how long the board may take to come back as MicroPython


class BringupError(FieldnodeError):
    pass


def _precheck(fleet, node_id, firmware, settings, rotate, skip_flash):
    pki.check_node_id(node_id)
    fleet.require_ca()
    with Inventory(fleet.inventory_db) as inv:
        node = inv.get(node_id)
    if node and node["status"] == "revoked":
        raise RevokedNode(f"{node_id} was revoked on {node['revoked_at']}: node ids are never reused, "
                          "bring the board up under a new node id")
    if node and node["status"] in ("provisioned", "rotated") and not rotate:
        raise AlreadyProvisioned(f"{node_id} is already provisioned: nothing was flashed; use --rotate to bring "
                                 "it up again with new keys, or `fieldnode deploy` for new firmware only")
    if not skip_flash:
        from .flash import read_image

        read_image(firmware)  # a wrong or damaged .bin fails here, before any board is touched
    check_settings(fleet, node_id, settings)


def _wait_for_repl(port, open_board, timeout):
    """The board back as MicroPython on `port` (a USB board re-enumerates after the reset): bounded polling."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open_board(port) as board:
                return board.info()
        except FieldnodeError as exc:
            if time.monotonic() >= deadline:
                raise BringupError(f"flashed, but no MicroPython answered on {port} within {timeout:g}s "
                                   f"({exc}): press the board's RESET button and run the same bringup with "
                                   "--skip-flash") from None
            time.sleep(0.2)  # the device node or the REPL is not back yet: poll again


def bringup(fleet, node_id, port, firmware, settings=None, *, repl_port=None, operator=None, chip="auto",
            erase=False, skip_flash=False, rotate=False, passphrase=None, ca_loader=None, flash_progress=None,
            deploy_progress=None, open_board=None, repl_wait=REPL_WAIT_S, on_step=None):
    """Flash, deploy, provision; return {"node_id", "flash", "deploy", "provision"} (the steps' results as
    dicts; "flash" is None with skip_flash). `on_step(name)` is called as each step starts."""
    from .deploy import deploy
    from .flash import flash_node

    settings = settings or Settings()
    repl_port = repl_port or port
    on_step = on_step or (lambda name: None)
    if open_board is None:
        from .board import Board

        def open_board(p):  # short answers while polling for the board's return
            return Board(p, timeout=3)
    _precheck(fleet, node_id, firmware, settings, rotate, skip_flash)
    if chip == "auto" and settings.board and boards.load(settings.board)["platform"] == "esp32":
        chip = boards.load(settings.board)["chip"]  # flashing refuses an image built for another chip

    with Action(fleet, "bringup", node_id, operator) as act:
        act.details = {"port": port, "repl_port": repl_port, "skip_flash": skip_flash}
        result = {"node_id": node_id, "flash": None}
        step = "flash"
        try:
            if not skip_flash:
                on_step("flash")
                flashed = flash_node(fleet.root, port, firmware, node=node_id, operator=operator, chip=chip,
                                     erase=erase, progress=flash_progress)
                result["flash"] = flashed.as_dict()
                act.mac = flashed.mac
                act.hashes["firmware"] = flashed.sha256
                _wait_for_repl(repl_port, open_board, repl_wait)
            step = "deploy"
            on_step("deploy")
            deployed = deploy(repl_port, settings.board, progress=deploy_progress, fleet=fleet.root,
                              operator=operator)
            result["deploy"] = deployed.as_dict()
            act.hashes["app"] = deployed.app_sha256
            step = "provision"
            on_step("provision")
            result["provision"] = provision(fleet, node_id, repl_port, settings, rotate=rotate, operator=operator,
                                            passphrase=passphrase, ca_loader=ca_loader)
        except FieldnodeError as exc:
            act.details["stopped_at"] = step
            raise BringupError(f"bringup stopped at {step}: {exc}") from None
        act.mac = result["provision"]["mac"] or act.mac
        act.hashes["config"] = result["provision"]["config_sha256"]
        if result["flash"] and result["provision"]["mac"] and result["flash"]["mac"] != result["provision"]["mac"]:
            # On one board both are its base MAC; on the bench they are two emulators.
            act.details["mac_differs"] = True
    return result
