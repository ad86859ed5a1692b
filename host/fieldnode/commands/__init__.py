"""The command table. Each module in this package registers its commands with @command/@arg;
handlers take the parsed namespace, call typed functions elsewhere in fieldnode, and print.

A name with a space ("ca init") becomes a sub-command of a group ("ca").
"""
import importlib
import pkgutil

# name -> (handler, help, [(argument names, argparse keywords)])
COMMANDS = {}


def command(name, help):
    def register(fn):
        COMMANDS[name] = (fn, help, getattr(fn, "_args", []))
        return fn
    return register


def arg(*names, **kw):
    def add(fn):
        fn._args = [(names, kw)] + getattr(fn, "_args", [])
        return fn
    return add


def fleet_arg(fn):
    """--fleet DIR, shared by every command that reads or changes fleet state."""
    return arg("--fleet", metavar="DIR",
               help="fleet directory (default: $FIELDNODE_FLEET, else ~/.local/share/fieldnode/fleet)")(fn)


def load_all():
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(__name__ + "." + info.name)
    return COMMANDS
