# Platform layer: one module per platform (esp32.py, unix.py), each with a `Platform(board, config)` class.
# Nothing is imported or touched until load() is called.


def load(board):
    """The Platform class for board["platform"] ("esp32" or "unix")."""
    platform = board.get("platform")
    if platform == "esp32":
        from node.hal import esp32 as mod
    elif platform == "unix":
        from node.hal import unix as mod
    else:
        raise ValueError("board.platform must be 'esp32' or 'unix' (got %r)" % (platform,))
    return mod.Platform
