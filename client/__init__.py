"""tierstore's client: store interfaces and their remote, local and in-memory implementations.

    from tierstore.client import connect
    client = connect("127.0.0.1:7070")
    kv = client.key_value_store("counts", partition=0, num_partitions=8)
"""

from tierstore.client import errors
from tierstore.client.interfaces import KeyValueStore, SessionStore, WindowStore
from tierstore.client.local import LocalKeyValueStore
from tierstore.client.memory import InMemoryKeyValueStore
from tierstore.client.partitioner import partition_for
from tierstore.client.reader import ReadOptions
from tierstore.client.readers import SessionReader, WindowReader
from tierstore.client.remote import Client, Reader, RemoteKeyValueStore, connect
from tierstore.client.tls import TLSConfig
from tierstore.client.windowed import (
    InMemorySessionStore,
    InMemoryWindowStore,
    LocalSessionStore,
    LocalWindowStore,
    SessionStoreImpl,
    WindowStoreImpl,
)

__all__ = [
    "Client",
    "InMemoryKeyValueStore",
    "InMemorySessionStore",
    "InMemoryWindowStore",
    "KeyValueStore",
    "LocalKeyValueStore",
    "LocalSessionStore",
    "LocalWindowStore",
    "ReadOptions",
    "Reader",
    "RemoteKeyValueStore",
    "SessionReader",
    "SessionStore",
    "SessionStoreImpl",
    "TLSConfig",
    "WindowReader",
    "WindowStore",
    "WindowStoreImpl",
    "connect",
    "errors",
    "partition_for",
]
