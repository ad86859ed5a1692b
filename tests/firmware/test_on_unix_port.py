"""Run every firmware test module in this folder on the MicroPython Unix port too.

The modules are plain-assert tests that pytest runs on CPython; here the same files run on the Unix port
through mpyunit.py, so a firmware module that only works on CPython fails the suite.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fieldnode import paths
from node.sensors.bme280 import BME280

import alloc_bme280  # beside this file: the script the Unix port runs below

HERE = Path(__file__).resolve().parent
MODULES = sorted(p.stem for p in HERE.glob("test_*.py") if p.stem != "test_on_unix_port")


@pytest.mark.parametrize("module", MODULES)
def test_module_on_unix_port(module):
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(HERE), paths.micropypath()]))
    proc = subprocess.run([paths.micropython_exe(), "-X", "heapsize=2M", str(HERE / "mpyunit.py"), module],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert summary, out
    assert int(summary.group(1)) > 0, "no tests ran on the Unix port:\n" + out
    assert proc.returncode == 0 and summary.group(2) == "0", out


def test_bme280_read_allocates_only_its_result():
    """One read() on the Unix port allocates what its result takes (a tuple and three floats) and nothing
    more, at the middle and at both ends of the operating range; and it reads what CPython reads."""
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(HERE), paths.micropypath()]))
    proc = subprocess.run([paths.micropython_exe(), "-X", "heapsize=2M", str(HERE / "alloc_bme280.py")],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["result_only"] > 0
    for name, adc in alloc_bme280.CASES:
        assert got[name]["read"] == got["result_only"], (name, got)
        on_cpython = BME280(alloc_bme280.StillI2C(*adc)).read()
        assert got[name]["reading"] == pytest.approx(on_cpython, rel=1e-12, abs=1e-12), name
