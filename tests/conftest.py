import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Firmware modules run unchanged on CPython for unit tests; `micropython.const` comes from a shim.
for p in (ROOT / "firmware", ROOT / "tests" / "shims"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
