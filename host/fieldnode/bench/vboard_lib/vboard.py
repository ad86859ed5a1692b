# Runs on the virtual board only (fieldnode vboard): what the host may ask a virtual board that a real board
# does not know. `import vboard` fails on real boards, which is how the host tells them apart.
import os


def bench():
    """{"i2c": "HOST:PORT", "bus": NAME} of the emulated sensor bus, for the config's `bench` section."""
    return {"i2c": os.getenv("FIELDNODE_VBOARD_I2C"), "bus": os.getenv("FIELDNODE_VBOARD_BUS")}
