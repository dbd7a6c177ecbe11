from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreakGlassRequest(_message.Message):
    __slots__ = ("name", "reason", "duration_secs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECS_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    duration_secs: int
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., duration_secs: _Optional[int] = ...) -> None: ...

class BreakGlassResponse(_message.Message):
    __slots__ = ("expires_at",)
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    expires_at: int
    def __init__(self, expires_at: _Optional[int] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "created_at", "state", "encryptions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    created_at: int
    state: str
    encryptions: int
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[int] = ..., state: _Optional[str] = ..., encryptions: _Optional[int] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("id", "reason", "placed_by", "placed_by_principal", "placed_at", "released_at", "released_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLACED_BY_FIELD_NUMBER: _ClassVar[int]
    PLACED_BY_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PLACED_AT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    placed_by: int
    placed_by_principal: str
    placed_at: int
    released_at: int
    released_by: int
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ..., placed_by: _Optional[int] = ..., placed_by_principal: _Optional[str] = ..., placed_at: _Optional[int] = ..., released_at: _Optional[int] = ..., released_by: _Optional[int] = ...) -> None: ...

class DestroyRequest(_message.Message):
    __slots__ = ("id", "kind", "wait_secs", "requested_by", "created_at", "approvals", "approvals_needed", "status", "approved_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    wait_secs: int
    requested_by: int
    created_at: int
    approvals: _containers.RepeatedScalarFieldContainer[int]
    approvals_needed: int
    status: str
    approved_at: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., wait_secs: _Optional[int] = ..., requested_by: _Optional[int] = ..., created_at: _Optional[int] = ..., approvals: _Optional[_Iterable[int]] = ..., approvals_needed: _Optional[int] = ..., status: _Optional[str] = ..., approved_at: _Optional[int] = ...) -> None: ...

class KeyMetadata(_message.Message):
    __slots__ = ("name", "key_id", "description", "state", "created_at", "current_version", "algorithm", "versions", "rotation_period_secs", "next_rotation_at", "min_decrypt_version", "destroy_due_at", "destroyed_at", "holds", "destroy_requests", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_SECS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_AT_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESTROY_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_AT_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    DESTROY_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    key_id: str
    description: str
    state: str
    created_at: int
    current_version: int
    algorithm: str
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    rotation_period_secs: int
    next_rotation_at: int
    min_decrypt_version: int
    destroy_due_at: int
    destroyed_at: int
    holds: _containers.RepeatedCompositeFieldContainer[Hold]
    destroy_requests: _containers.RepeatedCompositeFieldContainer[DestroyRequest]
    kind: str
    def __init__(self, name: _Optional[str] = ..., key_id: _Optional[str] = ..., description: _Optional[str] = ..., state: _Optional[str] = ..., created_at: _Optional[int] = ..., current_version: _Optional[int] = ..., algorithm: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., rotation_period_secs: _Optional[int] = ..., next_rotation_at: _Optional[int] = ..., min_decrypt_version: _Optional[int] = ..., destroy_due_at: _Optional[int] = ..., destroyed_at: _Optional[int] = ..., holds: _Optional[_Iterable[_Union[Hold, _Mapping]]] = ..., destroy_requests: _Optional[_Iterable[_Union[DestroyRequest, _Mapping]]] = ..., kind: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "description", "rotation_period_secs", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_SECS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    rotation_period_secs: int
    kind: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., rotation_period_secs: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class KeyNameRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class KeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyMetadata
    def __init__(self, key: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("name", "rotation_period_secs", "min_decrypt_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_SECS_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    rotation_period_secs: int
    min_decrypt_version: int
    def __init__(self, name: _Optional[str] = ..., rotation_period_secs: _Optional[int] = ..., min_decrypt_version: _Optional[int] = ...) -> None: ...

class RevokeVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ScheduleDestroyRequest(_message.Message):
    __slots__ = ("name", "after_secs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SECS_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_secs: int
    def __init__(self, name: _Optional[str] = ..., after_secs: _Optional[int] = ...) -> None: ...

class DestroyRequestResponse(_message.Message):
    __slots__ = ("request_id", "approvals", "approvals_needed", "status", "key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    approvals: int
    approvals_needed: int
    status: str
    key: KeyMetadata
    def __init__(self, request_id: _Optional[str] = ..., approvals: _Optional[int] = ..., approvals_needed: _Optional[int] = ..., status: _Optional[str] = ..., key: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class ApproveDestroyRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PlaceHoldRequest(_message.Message):
    __slots__ = ("name", "reason", "hold_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    hold_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., hold_id: _Optional[str] = ...) -> None: ...

class ReleaseHoldRequest(_message.Message):
    __slots__ = ("name", "hold_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    hold_id: str
    def __init__(self, name: _Optional[str] = ..., hold_id: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyMetadata
    def __init__(self, key: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyMetadata]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyMetadata, _Mapping]]] = ...) -> None: ...

class DescribeKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyMetadata
    def __init__(self, key: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...
