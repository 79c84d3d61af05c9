"""Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo partitions.

A reader must find the partition a producer wrote a key to, so this matches Kafka's
`Utils.murmur2` and `toPositive` bit for bit (tests check Kafka's own test vectors).
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 as an unsigned 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length & ~3
    for k in struct.unpack_from(f"<{n4 >> 2}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    extra = length & 3
    if extra == 3:
        h ^= data[n4 + 2] << 16
    if extra >= 2:
        h ^= data[n4 + 1] << 8
    if extra >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, num_partitions: int) -> int:
    if num_partitions == 1:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
