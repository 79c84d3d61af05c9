"""Adapters that put a stream processor's state in tierstore (docs/adapters.md).

Each adapter lives in its own module and imports its framework there, so the core package never
needs a framework installed: `tierstore.adapters.faust` needs the `faust` extra (and is
registered as Faust's `tierstore://` store), `tierstore.adapters.quix` the `quix` extra.
"""
