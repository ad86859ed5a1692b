# Runs on the MicroPython Unix port, never on the host: the perf bench's node (fieldnode.bench.perf_node).
#
#     micropython -X heapsize=64k -m perf_node MODE CYCLES        (cwd: a provisioned node's folder)
#
# Boots the node as main.py does (node.app.boot: the config, its parser unloaded, Node.start) and runs
# CYCLES cycles back to back, without the interval in between, with the real sensor bridge, seal, flash
# queue and mTLS link. What it measures goes to the console as "perf: <name> <value>" lines:
#
#   heap    the heap in use after gc.collect() once the node has started, after the 100th cycle and after
#           the last; "fault" lines for anything the node logged that a healthy cycle does not log, and
#           for a MemoryError (also one the cycle caught and logged itself)
#   alloc   bytes allocated per cycle, with the collector off around each cycle (perf_alloc.py)
#   run     nothing but the cycles (for instruction counts and CPU time); "perf: mark" before the first
#           cycle and after the last
import gc
import sys

import node.app as app

def main(mode, cycles):
    faults = []
    connects = [0]
    log = app.log

    def watch(*parts):
        text = " ".join([str(p) for p in parts])
        if text.startswith("connected to "):
            connects[0] += 1
            if connects[0] > 1:
                faults.append("reconnected: " + text)
        elif not (text.startswith("node ") and " started" in text):
            faults.append(text)
        log(*parts)

    app.log = watch
    try:
        node = app.boot()
    except MemoryError:
        print("perf: fault MemoryError during start")
        return
    if node is None:
        print("perf: fault the node did not start")
        return
    gc.collect()
    print("perf: heap_started", gc.mem_alloc())
    if mode == "alloc":
        from perf_alloc import measure  # apart, so that its code is not on the heap of a heap trial

        measure(node, cycles)
    elif mode == "run":
        print("perf: mark")
        for _ in range(cycles):
            node.cycle()
        print("perf: mark")
    else:
        _heap(node, cycles, faults)
    print("perf: seq", node.queue.next_seq - 1)
    print("perf: waiting", node.queue.waiting())
    print("perf: link_up", 1 if node.link.up else 0)
    for text in faults:
        print("perf: fault", text)


def _heap(node, cycles, faults):
    at = min(100, cycles)
    done = 0
    try:
        for i in range(cycles):
            node.cycle()
            done = i + 1
            if done == at:
                gc.collect()
                print("perf: heap_at", at, gc.mem_alloc())
    except MemoryError as exc:
        sys.print_exception(exc)
        faults.append("MemoryError in cycle %d: %s" % (done + 1, exc))
    gc.collect()
    print("perf: cycles", done)
    print("perf: heap_end", gc.mem_alloc())
    print("perf: heap_free", gc.mem_free())

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
