# Runs on the MicroPython Unix port, never on the host: perf_node.py's "alloc" mode.
#
# Bytes allocated per cycle, with the collector off around each cycle (gc.mem_alloc() before and after),
# after 100 cycles of warm-up: in all, and in parts, each measured around one call inside the cycle:
#   mqtt    link.publish (umqtt.simple framing the PUBLISH and reading the PUBACK, through the TLS socket)
#   sample  Node.sample (the sensor over its bus, the compensation, the health check)
#   seal    Sealer.seal_reading        queue   Queue.append        clock   the platform's now()
# The wrappers take their callee's exact arguments (no *args tuple), so they allocate nothing themselves.
import gc


def measure(node, cycles):
    parts = {}

    def count(obj, name, label):
        fn = getattr(obj, name)
        parts[label] = [0]
        acc = parts[label]
        if label == "sample":
            def wrapped():
                a = gc.mem_alloc()
                r = fn()
                acc[0] += gc.mem_alloc() - a
                return r
        elif label == "mqtt":
            def wrapped(topic, msg, retain=False):
                a = gc.mem_alloc()
                fn(topic, msg, retain)
                acc[0] += gc.mem_alloc() - a
        elif label == "queue":
            def wrapped(msg):
                a = gc.mem_alloc()
                r = fn(msg)
                acc[0] += gc.mem_alloc() - a
                return r
        elif label == "clock":
            def wrapped():
                a = gc.mem_alloc()
                r = fn()
                acc[0] += gc.mem_alloc() - a
                return r
        else:
            def wrapped(boot, seq, ts, tq, t, h, p, bits, status):
                a = gc.mem_alloc()
                r = fn(boot, seq, ts, tq, t, h, p, bits, status)
                acc[0] += gc.mem_alloc() - a
                return r
        setattr(obj, name, wrapped)

    for _ in range(100):  # warm-up: the sensor opened, the queue past its first segment
        node.cycle()
    count(node, "sample", "sample")
    count(node.sealer, "seal_reading", "seal")
    count(node.queue, "append", "queue")
    count(node.hal, "now", "clock")
    count(node.link, "publish", "mqtt")
    total = 0
    gc.collect()
    for _ in range(cycles):
        if gc.mem_free() < 32768:
            gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        node.cycle()
        total += gc.mem_alloc() - a
        gc.enable()
    print("perf: alloc_cycles", cycles)
    print("perf: alloc_total", total)
    for label in parts:
        print("perf: alloc_" + label, parts[label][0])
