"""Typed errors: what the daemon answered, read from its gRPC status code
and metadata (never from the message text), and what is wrong with an
envelope message."""

from __future__ import annotations

import grpc

#: Metadata the daemon sets when it is ``sealed`` or ``uninitialized``.
STATE_METADATA = "keywarden-state"
#: Metadata naming the request field an INVALID_ARGUMENT is about.
FIELD_METADATA = "keywarden-field"
#: Metadata carrying the key's lifecycle state on FAILED_PRECONDITION.
KEY_STATE_METADATA = "keywarden-key-state"


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


def from_rpc_error(err: grpc.RpcError) -> KeywardenError:
    """The typed form of a status the daemon answered."""
    code = err.code() if hasattr(err, "code") else None
    message = err.details() if hasattr(err, "details") else str(err)
    message = message or ""
    meta: dict[str, str] = {}
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for k, v in trailing or ():
        if isinstance(v, str):
            meta[k] = v
    state = meta.get(STATE_METADATA)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if state == "sealed":
            return SealedError(message, code)
        if state == "uninitialized":
            return UninitializedError(message, code)
        return FailedPreconditionError(message, code, meta.get(KEY_STATE_METADATA))
    if code == grpc.StatusCode.UNAVAILABLE:
        if state == "sealed":
            return SealedError(message, code)
        return UnavailableError(message, code)
    simple: dict[grpc.StatusCode, type[KeywardenError]] = {
        grpc.StatusCode.NOT_FOUND: NotFoundError,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
        grpc.StatusCode.DATA_LOSS: DataLossError,
    }
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message, code, meta.get(FIELD_METADATA))
    if code in simple:
        return simple[code](message, code)
    return KeywardenError(f"{code}: {message}", code)


def from_item(code: int, message: str) -> KeywardenError:
    """The typed form of one failed item of a batch call (code and message
    only: items carry no metadata)."""
    by_value = {c.value[0]: c for c in grpc.StatusCode}
    status = by_value.get(code, grpc.StatusCode.UNKNOWN)
    simple: dict[grpc.StatusCode, type[KeywardenError]] = {
        grpc.StatusCode.NOT_FOUND: NotFoundError,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
        grpc.StatusCode.DATA_LOSS: DataLossError,
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
        grpc.StatusCode.UNAVAILABLE: UnavailableError,
    }
    return simple.get(status, KeywardenError)(message, status)
