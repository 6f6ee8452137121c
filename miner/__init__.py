"""The AIT miner daemon (`miner run`)."""

__version__ = "0.1.0"
