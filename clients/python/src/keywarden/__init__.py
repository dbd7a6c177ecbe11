"""Keywarden's Python client: data keys and envelope encryption from a
Keywarden daemon over its local Unix socket.

>>> import keywarden
>>> with keywarden.Client() as kw:                      # $KEYWARDEN_SOCKET
...     sealed = kw.encrypt("patients", b"note", {"table": "patients", "row": "42"})
...     kw.decrypt(sealed, {"table": "patients", "row": "42"})
b'note'
"""

from .cache import CacheConfig, CacheStats
from .client import DEFAULT_SOCKET, MAX_BATCH, MAX_FIELD, SOCKET_ENV, Client, Mac, channel_options
from .datakey import DataKey
from .errors import (
    AlreadyExistsError,
    ConnectError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    KeywardenError,
    MessageError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SealedError,
    UnavailableError,
    UninitializedError,
    UsageError,
)

__all__ = [
    "DEFAULT_SOCKET",
    "MAX_BATCH",
    "MAX_FIELD",
    "SOCKET_ENV",
    "AlreadyExistsError",
    "CacheConfig",
    "CacheStats",
    "Client",
    "ConnectError",
    "DataKey",
    "DataLossError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "KeywardenError",
    "Mac",
    "MessageError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SealedError",
    "UnavailableError",
    "UninitializedError",
    "UsageError",
    "channel_options",
]
__version__ = "0.1.0"
