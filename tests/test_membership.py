"""Membership (server/cluster.py) in-process: the live set across probe rounds, with peer
discovery through DNS (`dns:NAME:PORT`). DNS is replaced at its seam (socket.getaddrinfo) and
the health probe by a function; Membership itself is the real one."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tierstore.server.cluster import ClusterConfig, Membership

ME = "10.0.0.1:7070"
PEERS = ("10.0.0.2:7070", "10.0.0.3:7070")


def _answers(ips: list[str]) -> list[Any]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 7070)) for ip in ips]


def test_a_failed_dns_lookup_does_not_drop_every_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient resolver error is no evidence that the peers died: without this, every
    server saw itself alone for a round, took every shard (a claim each, fencing every
    worker) and then gave them all back."""
    dns_up = True

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if not dns_up:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        assert host == "tierstore-headless"
        return _answers(["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    m = Membership(ClusterConfig(advertise=ME, peers=("dns:tierstore-headless:7070",)),
                   probe=lambda address, timeout_s: True)
    everyone = tuple(sorted((ME, *PEERS)))
    assert m.probe_once() == everyone
    dns_up = False
    for _ in range(5):
        assert m.probe_once() == everyone  # the peers still answer their probes
    assert m.changes == 1


def test_a_peer_that_stops_answering_is_dropped_after_the_failure_limit() -> None:
    up = {PEERS[0]: True, PEERS[1]: True}
    m = Membership(ClusterConfig(advertise=ME, peers=PEERS, failures_to_dead=3),
                   probe=lambda address, timeout_s: up[address])
    assert m.probe_once() == (ME, *PEERS)
    up[PEERS[1]] = False
    assert m.probe_once() == (ME, *PEERS)
    assert m.probe_once() == (ME, *PEERS)
    assert m.probe_once() == (ME, PEERS[0])
    up[PEERS[1]] = True
    assert m.probe_once() == (ME, *PEERS)
