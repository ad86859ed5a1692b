"""fieldnode.inventory: the SQLite record of nodes and issued certificates, and the fleet's payload keys."""
import datetime
import json
import sqlite3
import threading

import pytest

from fieldnode.fleet import Fleet, KeyRing, iso, utcnow
from fieldnode.inventory import Inventory, InventoryError, serial_hex


def cert(serial, subject="node-1", key_id=1, kind="node"):
    return {"serial": serial, "subject": subject, "kind": kind, "fingerprint": "%064x" % serial,
            "key_id": key_id, "not_before": "2025-01-01T00:00:00+00:00", "not_after": "2027-01-01T00:00:00+00:00",
            "issued_at": iso(utcnow())}


def commit(inv, node_id, serial, key_id=1, rotation=None, mac=None):
    return inv.commit_provisioning(node_id, serial=serial, board="unix", mac=mac, port="/dev/x", key_id=key_id,
                                   config_sha256="ab" * 32, files={"config.json": "ab" * 32}, operator="tech",
                                   rotation=rotation)


@pytest.fixture
def inv(tmp_path):
    with Inventory(tmp_path / "inventory.sqlite") as i:
        yield i


def test_pending_then_provisioned_with_its_certificate(inv):
    serial = 0xABCDEF0123456789ABCDEF0123456789ABCDEF01  # 160 bits: beyond SQLite's integers
    inv.add_certificate(cert(serial))
    inv.add_pending_node("node-1", "unix", "/dev/x", "tech")
    assert inv.get("node-1")["status"] == "pending"
    assert commit(inv, "node-1", serial, mac="aa:bb:cc:dd:ee:ff") is True
    node = inv.get("node-1")
    assert node["status"] == "provisioned" and node["cert_serial"] == serial_hex(serial)
    assert node["files"] == {"config.json": "ab" * 32} and node["provisioned_at"] and node["rotated_at"] is None
    assert inv.certificate(serial)["status"] == "active"
    assert [n["node_id"] for n in inv.by_mac("aa:bb:cc:dd:ee:ff")] == ["node-1"]


def test_commit_and_record_are_idempotent(inv):
    inv.add_certificate(cert(1))
    inv.add_certificate(cert(1))  # a resumed run records the same issue again
    inv.add_pending_node("node-1")
    inv.add_pending_node("node-1")
    assert commit(inv, "node-1", 1) is True
    first = inv.get("node-1")
    assert commit(inv, "node-1", 1) is False
    assert inv.get("node-1") == first
    assert len(inv.certificates(subject="node-1")) == 1


def test_rotation_supersedes_the_old_certificate_until_the_overlap_ends(inv):
    inv.add_certificate(cert(1))
    inv.add_pending_node("node-1")
    commit(inv, "node-1", 1)
    inv.add_certificate(cert(2, key_id=2))
    end = utcnow() + datetime.timedelta(days=7)
    commit(inv, "node-1", 2, key_id=2, rotation={"revoke_after": end})
    assert inv.get("node-1")["status"] == "rotated" and inv.get("node-1")["key_id"] == 2
    old = inv.certificate(1)
    assert old["status"] == "superseded" and old["revoke_after"] == iso(end)
    assert inv.crl_serials() == []                                   # still inside the overlap
    assert inv.crl_serials(end + datetime.timedelta(seconds=1)) == [1]  # on the CRL once it ends


def test_rotation_with_revoke_old_revokes_at_once(inv):
    inv.add_certificate(cert(1))
    inv.add_pending_node("node-1")
    commit(inv, "node-1", 1)
    inv.add_certificate(cert(2, key_id=2))
    commit(inv, "node-1", 2, key_id=2, rotation={"revoke_after": None})
    assert inv.certificate(1)["status"] == "revoked" and inv.crl_serials() == [1]


def test_revoke_node_lists_every_certificate_and_is_final(inv):
    inv.add_certificate(cert(1))
    inv.add_pending_node("node-1")
    commit(inv, "node-1", 1, mac="aa:bb:cc:dd:ee:ff")
    inv.add_certificate(cert(2, key_id=2))  # a pending rotation that never finished
    assert inv.revoke_node("node-1", "tech") == [1, 2]
    assert inv.revoke_node("node-1", "tech") == []  # again: nothing new
    assert inv.get("node-1")["status"] == "revoked" and inv.crl_serials() == [1, 2]
    assert inv.by_mac("aa:bb:cc:dd:ee:ff") == []
    assert [n["node_id"] for n in inv.nodes(include_revoked=False)] == []
    with pytest.raises(InventoryError, match="revoked"):
        commit(inv, "node-1", 2, key_id=2)


def test_unknown_node_and_unrecorded_certificate_are_refused(inv):
    with pytest.raises(InventoryError, match="unknown node 'ghost'.*inventory list"):
        inv.revoke_node("ghost")
    inv.add_pending_node("node-1")
    with pytest.raises(InventoryError, match="not in the inventory"):
        commit(inv, "node-1", 99)


def test_a_failed_transaction_changes_nothing(inv):
    inv.add_certificate(cert(1))
    with pytest.raises(sqlite3.IntegrityError):
        with inv.transaction() as db:
            db.execute("UPDATE certificates SET status = 'revoked' WHERE serial = '1'")
            db.execute("INSERT INTO certificates (serial) VALUES ('x')")  # violates NOT NULL
    assert inv.certificate(1)["status"] == "pending"


def test_concurrent_writers_wait_for_each_other(tmp_path):
    path = tmp_path / "inventory.sqlite"
    Inventory(path).close()
    errors = []

    def worker(n):
        try:
            with Inventory(path) as inv:
                for i in range(20):
                    inv.add_certificate(cert(n * 100 + i, subject="node-%d" % n))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with Inventory(path) as inv:
        assert len(inv.certificates()) == 80


def test_a_file_that_is_not_an_inventory_is_a_one_line_error(tmp_path):
    path = tmp_path / "inventory.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InventoryError, match="not a usable inventory.*restore it from backup"):
        Inventory(path)


# -- payload keys in the fleet directory ---------------------------------------------------------------

def test_key_ids_count_up_and_a_key_id_names_one_key_forever(tmp_path):
    fleet = Fleet(tmp_path)
    assert fleet.next_key_id("node-1") == 1
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)  # the same again: fine (a resumed run)
    assert fleet.next_key_id("node-1") == 2
    with pytest.raises(Exception, match="never reused"):
        fleet.save_payload_key("node-1", 1, b"\x02" * 32)
    assert oct((tmp_path / "keys" / "node-1.json").stat().st_mode & 0o777) == "0o600"


def test_keyring_follows_rotation_overlap_and_revocation(tmp_path):
    fleet = Fleet(tmp_path)
    ring = KeyRing(fleet)
    assert ring.get("node-1") is None
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)
    assert ring.get("node-1") == {1: b"\x01" * 32}          # provisioned while the monitor runs
    fleet.save_payload_key("node-1", 2, b"\x02" * 32)
    fleet.retire_payload_key("node-1", 1, utcnow() + datetime.timedelta(days=7))
    assert ring.get("node-1") == {1: b"\x01" * 32, 2: b"\x02" * 32}  # both during the overlap
    fleet.retire_payload_key("node-1", 1, utcnow() - datetime.timedelta(seconds=1))
    assert ring.get("node-1") == {2: b"\x02" * 32}          # the old one after it
    fleet.revoke_payload_keys("node-1")
    assert ring.get("node-1") is None and ring.get("node-1", {}) == {}
    # kept for reading old messages on purpose
    assert fleet.payload_keys(include_inactive=True)["node-1"] == {1: b"\x01" * 32, 2: b"\x02" * 32}
    assert fleet.payload_keys()["node-1"] == {}


def test_a_key_file_that_fails_to_reload_never_leaves_the_old_keys_accepted(tmp_path):
    """A revocation written with a damaged entry must not leave the ring serving the keys it had cached."""
    fleet = Fleet(tmp_path)
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)
    ring = KeyRing(fleet)
    assert ring.get("node-1") == {1: b"\x01" * 32}
    path = tmp_path / "keys" / "node-1.json"
    damaged = json.loads(path.read_text())
    damaged["1"]["revoked"] = iso(utcnow())
    damaged["2"] = {"key": "not hex", "created": None, "not_after": None, "revoked": None}
    path.write_text(json.dumps(damaged) + " ")  # a different size, so the change is seen at once
    for _ in range(2):  # and again: the failed reload must not have been remembered as done
        with pytest.raises(Exception, match="unreadable payload keys"):
            ring.get("node-1")
    del damaged["2"]
    path.write_text(json.dumps(damaged))
    assert ring.get("node-1") is None  # repaired: key 1 is revoked, nothing accepted


def test_retiring_never_extends_an_earlier_limit(tmp_path):
    fleet = Fleet(tmp_path)
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)
    soon = utcnow() + datetime.timedelta(days=1)
    fleet.retire_payload_key("node-1", 1, soon)
    fleet.retire_payload_key("node-1", 1, soon + datetime.timedelta(days=30))
    assert fleet.key_records("node-1")[1]["not_after"] == iso(soon)


def test_the_older_keys_file_form_still_reads(tmp_path):
    fleet = Fleet(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "node-1.json").write_text(json.dumps({"7": "11" * 32}))
    assert KeyRing(fleet).get("node-1") == {7: b"\x11" * 32}
    assert fleet.next_key_id("node-1") == 8


def test_keyring_ignores_topic_names_that_are_not_node_ids(tmp_path):
    assert KeyRing(Fleet(tmp_path)).get("../../etc/passwd", "default") == "default"


def test_keyring_drops_a_key_when_its_overlap_ends_with_no_file_change(tmp_path, monkeypatch):
    """The ring caches the accepted keys between file changes; an overlap limit passing still counts."""
    from fieldnode import fleet as fleet_module

    clock = [utcnow()]
    monkeypatch.setattr(fleet_module, "utcnow", lambda: clock[0])
    monkeypatch.setattr(fleet_module.time, "time", lambda: clock[0].timestamp())
    fleet = Fleet(tmp_path)
    fleet.save_payload_key("node-1", 1, b"\x01" * 32)
    fleet.save_payload_key("node-1", 2, b"\x02" * 32)
    fleet.retire_payload_key("node-1", 1, clock[0] + datetime.timedelta(hours=1))
    ring = KeyRing(fleet)
    assert set(ring.get("node-1")) == {1, 2}
    clock[0] += datetime.timedelta(minutes=59)
    assert set(ring.get("node-1")) == {1, 2}
    clock[0] += datetime.timedelta(minutes=2)
    assert set(ring.get("node-1")) == {2}
    ring.get("node-1")[3] = b"x"  # a caller changing what it got does not change the ring
    assert set(ring.get("node-1")) == {2}
