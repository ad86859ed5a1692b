"""fieldnode.deploy's build step: what is compiled, where it goes, and that a stale output is never reused."""
import hashlib
import shutil

import pytest

from fieldnode import paths
from fieldnode.deploy import DeployError, app_sources, app_tree_sha256, build, decode_mpy


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "firmware"
    shutil.copytree(paths.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_the_app_is_main_py_and_the_node_package_not_the_unix_compat_folder(source):
    rels = set(app_sources(source))
    assert "main.py" in rels and "node/app.py" in rels and "node/hal/unix.py" in rels
    assert not any(r.startswith("unix/") for r in rels)
    (source / "main.py").unlink()
    with pytest.raises(DeployError, match="has no main.py"):
        app_sources(source)


def test_modules_compile_to_mpy_and_the_entry_file_stays_source(source, tmp_path):
    out = build(source, "unix", "x64", build_root=tmp_path / "build")
    assert out.app["/main.py"] == (source / "main.py").read_bytes()
    assert out.app["/node/app.mpy"][:2] == b"M\x06" and "/node/app.py" not in out.app
    assert out.folder.parent == tmp_path / "build" / "unix"
    plain = build(source, "unix", "x64", compile=False, build_root=tmp_path / "build")
    assert plain.app["/node/app.py"] == (source / "node" / "app.py").read_bytes()


def test_a_source_change_builds_afresh_and_the_output_is_deterministic(source, tmp_path):
    root = tmp_path / "build"
    first = build(source, "unix", "x64", build_root=root)
    (source / "node" / "seal.py").write_text((source / "node" / "seal.py").read_text() + "\nMARK = 2\n")
    second = build(source, "unix", "x64", build_root=root)
    assert second.folder != first.folder  # a new folder: nothing of the old build is reused
    changed = {p for p in first.app if first.app[p] != second.app[p]}
    assert changed == {"/node/seal.mpy"}
    shutil.rmtree(second.folder)
    assert build(source, "unix", "x64", build_root=root).app == second.app  # rebuilt, same bytes


def test_a_module_that_does_not_compile_names_itself(source, tmp_path):
    (source / "node" / "alarms.py").write_text("def broken(:\n")
    with pytest.raises(DeployError, match=r"mpy-cross could not compile node/alarms.py: .*the board was not"):
        build(source, "unix", "x64", build_root=tmp_path / "build")


def test_the_app_tree_hash_is_over_sorted_path_and_sha256_lines():
    files = {"/node/b.mpy": b"b", "/main.py": b"m"}
    lines = "/main.py %s\n/node/b.mpy %s\n" % (hashlib.sha256(b"m").hexdigest(), hashlib.sha256(b"b").hexdigest())
    assert app_tree_sha256(files) == hashlib.sha256(lines.encode()).hexdigest()


def test_decode_mpy():
    assert decode_mpy(2822) == ("6.3", "x64")  # the Unix port on x86-64
    assert decode_mpy(6 | 3 << 8 | 10 << 10) == ("6.3", "xtensawin")
    assert decode_mpy(6 | 3 << 8 | 11 << 10) == ("6.3", "rv32imc")
