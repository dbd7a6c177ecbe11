"""Typed errors: what the daemon answered, read from its gRPC status code
and metadata (never from the message text), and what is wrong with an
envelope message."""

from __future__ import annotations

import grpc

from .v1 import metadata

#: Metadata the daemon sets when it is ``sealed`` or ``uninitialized``.
STATE_METADATA = metadata.STATE
#: Metadata naming the request field an INVALID_ARGUMENT is about.
FIELD_METADATA = metadata.FIELD
#: Metadata carrying the key's lifecycle state on FAILED_PRECONDITION.
KEY_STATE_METADATA = metadata.KEY_STATE


class KeywardenError(Exception):
    """Every error this package raises. ``code`` is the gRPC status code
    when the daemon answered; ``message`` is the daemon's text, for people."""

    retryable = False

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ConnectError(KeywardenError):
    """The socket could not be reached or the connection broke."""

    retryable = True


class SealedError(KeywardenError):
    """The daemon is sealed: custodians must unseal it first."""

    retryable = True


class UninitializedError(KeywardenError):
    """The daemon was never initialised."""


class NotFoundError(KeywardenError):
    """No such key (or the blob names a key this daemon does not know)."""


class PermissionDeniedError(KeywardenError):
    """The policy does not allow this caller this operation."""


class InvalidArgumentError(KeywardenError):
    """A request field is wrong; ``field`` names it when the daemon did."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, field: str | None = None) -> None:
        super().__init__(message, code)
        self.field = field


class FailedPreconditionError(KeywardenError):
    """The key's state forbids the operation; ``key_state`` names it
    (``suspended``, ``pending_destruction``, ``destroyed``, ...)."""

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, key_state: str | None = None
    ) -> None:
        super().__init__(message, code)
        self.key_state = key_state


class UnavailableError(KeywardenError):
    """The daemon or its HSM is temporarily unavailable: retry later."""

    retryable = True


class ResourceExhaustedError(KeywardenError):
    """A limit was reached (a key version's encryptions, a rate, a size)."""


class AlreadyExistsError(KeywardenError):
    """The name is taken."""


class DataLossError(KeywardenError):
    """The daemon found its own state tampered with or rolled back."""


class MessageError(KeywardenError):
    """An envelope message is malformed, altered, truncated or not for this
    context. Output already written by a stream call must be discarded."""


class UsageError(KeywardenError, ValueError):
    """An argument to this package itself is wrong."""


#: Codes whose error class needs nothing but the code.
_BY_CODE: dict[grpc.StatusCode, type[KeywardenError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def _typed(
    code: grpc.StatusCode, message: str, state: str | None, field: str | None, key_state: str | None
) -> KeywardenError:
    if state == "sealed" and code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
        return SealedError(message, code)
    if state == "uninitialized" and code == grpc.StatusCode.FAILED_PRECONDITION:
        return UninitializedError(message, code)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(message, code, key_state)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message, code, field)
    if code in _BY_CODE:
        return _BY_CODE[code](message, code)
    return KeywardenError(f"{code}: {message}", code)


def from_rpc_error(err: grpc.RpcError) -> KeywardenError:
    """The typed form of a status the daemon answered."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else str(err)) or ""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    meta = {k: v for k, v in trailing or () if isinstance(v, str)}
    return _typed(
        code, message, meta.get(STATE_METADATA), meta.get(FIELD_METADATA), meta.get(KEY_STATE_METADATA)
    )


def from_item(code: int, message: str, field: str = "", key_state: str = "") -> KeywardenError:
    """The typed form of one failed item of a batch call (an ``ItemError``:
    code, message, and the field and key state the metadata would carry)."""
    by_value = {c.value[0]: c for c in grpc.StatusCode}
    status = by_value.get(code, grpc.StatusCode.UNKNOWN)
    return _typed(status, message, None, field or None, key_state or None)
