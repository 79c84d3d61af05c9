"""The tierstore store server (import name ``tierstore.server``)."""
