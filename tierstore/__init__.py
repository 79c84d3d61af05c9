"""tierstore: a remote, tiered state-store service for stream processors."""

__version__ = "0.1.0"
