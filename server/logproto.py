"""Changelog record format (see docs/protocol.md): headers on data records, and marker records.

Data record:   key = user key, value = value or None (tombstone), headers ts.e (epoch, 8 bytes
               big-endian) and ts.s (commit sequence, 8 bytes big-endian).
Marker record: key = b"" (never a user key: keys are 1 byte to 64 KiB), headers ts.m (b"commit"
               or b"claim"), ts.e and ts.s; value = JSON {"e", "s", "o": committed offsets}.
               A claim marker also carries "b" (the changelog offset its claimer had applied up
               to: restore takes its offsets only if nothing newer was applied) and "c" (a
               random id, by which the claimer finds its own marker in the log).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tierstore.server.ports import Header

H_EPOCH = "ts.e"
H_SEQ = "ts.s"
H_MARKER = "ts.m"
MARKER_KEY = b""
COMMIT = b"commit"
CLAIM = b"claim"

_U64 = struct.Struct(">Q")


def data_headers(epoch: int, seq: int) -> list[Header]:
    return [(H_EPOCH, _U64.pack(epoch)), (H_SEQ, _U64.pack(seq))]


def marker(
    kind: bytes, epoch: int, seq: int, offsets: dict[str, int],
    base: int | None = None, claim_id: str | None = None,
) -> tuple[bytes, list[Header]]:
    body: dict[str, object] = {"e": epoch, "s": seq, "o": offsets}
    if base is not None:
        body["b"] = base
    if claim_id is not None:
        body["c"] = claim_id
    value = json.dumps(body, sort_keys=True).encode()
    return value, [(H_MARKER, kind), (H_EPOCH, _U64.pack(epoch)), (H_SEQ, _U64.pack(seq))]


@dataclass(frozen=True)
class Marker:
    kind: bytes
    epoch: int
    seq: int
    offsets: dict[str, int]
    base: int | None = None  # claim markers: the changelog offset the claimer had applied to
    claim_id: str | None = None  # claim markers: the claimer's random id for this claim


def header_epoch(headers: Sequence[Header]) -> int | None:
    for name, value in headers:
        if name == H_EPOCH and len(value) == 8:
            return int(_U64.unpack(value)[0])
    return None


def parse_marker(value: bytes | None, headers: Sequence[Header]) -> Marker | None:
    """Decode a marker record; None if the record is not a well-formed tierstore marker."""
    kind = next((v for n, v in headers if n == H_MARKER), None)
    if kind not in (COMMIT, CLAIM) or value is None:
        return None
    try:
        body = json.loads(value)
        offsets = {str(k): int(v) for k, v in body["o"].items()}
        base = body.get("b")
        claim_id = body.get("c")
        return Marker(kind, int(body["e"]), int(body["s"]), offsets,
                      int(base) if base is not None else None,
                      str(claim_id) if claim_id is not None else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
