# Minimal test runner for the MicroPython Unix port (unittest is not on the board).
# Usage: micropython mpyunit.py MODULE [MODULE...]; each module's test_* functions run in order.
# Prints "PASS name" / "FAIL name: error" per test and a closing "N passed, N failed" line.
import sys


def run(names):
    passed = failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            try:
                fn()
            except Exception as exc:  # report every failure, keep going
                failed += 1
                print("FAIL %s.%s: %s: %s" % (name, attr, type(exc).__name__, exc))
                sys.print_exception(exc)
            else:
                passed += 1
                print("PASS %s.%s" % (name, attr))
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if run(sys.argv[1:]) else 0)
