"""Fault drills (issue 6): real servers on loopback, faults injected, and a checker that compares
the store with an independent model of every acknowledged commit. Each drill prints its figures.

Quick sizes run in the normal suite; `TIERSTORE_DRILL=long .venv/bin/pytest tests/drills -s`
runs the long version (see docs/guarantees.md for the figures).
"""
