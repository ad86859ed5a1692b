# The Unix port names its TLS module `ssl`; umqtt.simple 1.3.4 imports the older name `ussl`.
from ssl import *  # noqa: F401,F403
