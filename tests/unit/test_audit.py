import json

import pytest

from fieldnode import audit


def _fill(root, n=5):
    for i in range(n):
        audit.append(root, "provision", node="node-%d" % i, operator="tech", hashes={"config": "ab" * 32})


def _lines(root):
    return (root / "audit.log").read_text().splitlines()


def _write(root, lines):
    (root / "audit.log").write_text("".join(l + "\n" for l in lines))


def test_chain_verifies_and_records_carry_what_happened(tmp_path):
    _fill(tmp_path)
    assert audit.verify(tmp_path) == 5
    rec = audit.read(tmp_path, node="node-3")[0]
    assert rec["operator"] == "tech" and rec["action"] == "provision" and rec["result"] == "ok"
    assert rec["tool"].startswith("fieldnode ") and rec["time"].endswith("+00:00")
    assert rec["sha256"] == {"config": "ab" * 32}


def test_empty_log_verifies(tmp_path):
    assert audit.verify(tmp_path) == 0


def test_edited_record_is_named(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    rec = json.loads(lines[2])
    rec["operator"] = "someone-else"
    lines[2] = json.dumps(rec, sort_keys=True)
    _write(tmp_path, lines)
    with pytest.raises(audit.AuditError, match="record 3"):
        audit.verify(tmp_path)


def test_removed_record_is_named(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    del lines[1]
    _write(tmp_path, lines)
    with pytest.raises(audit.AuditError, match="record 2"):
        audit.verify(tmp_path)


def test_reordered_records_are_named(tmp_path):
    _fill(tmp_path)
    lines = _lines(tmp_path)
    lines[3], lines[4] = lines[4], lines[3]
    _write(tmp_path, lines)
    with pytest.raises(audit.AuditError, match="record 4"):
        audit.verify(tmp_path)


def test_truncated_tail_is_detected(tmp_path):
    _fill(tmp_path)
    _write(tmp_path, _lines(tmp_path)[:-1])
    with pytest.raises(audit.AuditError, match="cut off"):
        audit.verify(tmp_path)


def test_operator_defaults_to_the_os_user(tmp_path):
    rec = audit.append(tmp_path, "ca init")
    assert rec["operator"] == audit.operator_name()
    assert rec["operator"]
