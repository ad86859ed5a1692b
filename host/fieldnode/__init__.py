"""fieldnode host tooling: provisioning, deployment, monitoring and the HIL bench."""
__version__ = "0.1.0"
