"""Virtual hardware for the HIL bench: emulated sensors, the I2C bridge to nodes on the Unix port, faults."""
