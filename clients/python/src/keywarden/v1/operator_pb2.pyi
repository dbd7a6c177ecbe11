from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data", "info")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    info: BackupInfo
    def __init__(self, data: _Optional[bytes] = ..., info: _Optional[_Union[BackupInfo, _Mapping]] = ...) -> None: ...

class BackupInfo(_message.Message):
    __slots__ = ("id", "bytes", "generation", "created_at", "set_id", "sealed", "token_files", "vendor_procedure", "chain_head_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FILES_FIELD_NUMBER: _ClassVar[int]
    VENDOR_PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    bytes: int
    generation: int
    created_at: int
    set_id: str
    sealed: bool
    token_files: bool
    vendor_procedure: str
    chain_head_seq: int
    def __init__(self, id: _Optional[str] = ..., bytes: _Optional[int] = ..., generation: _Optional[int] = ..., created_at: _Optional[int] = ..., set_id: _Optional[str] = ..., sealed: _Optional[bool] = ..., token_files: _Optional[bool] = ..., vendor_procedure: _Optional[str] = ..., chain_head_seq: _Optional[int] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AcknowledgeTamperingRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AcknowledgeTamperingResponse(_message.Message):
    __slots__ = ("accepted", "complete", "approvals", "approvals_needed", "unverified", "replayed", "lost")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    UNVERIFIED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    accepted: str
    complete: bool
    approvals: int
    approvals_needed: int
    unverified: str
    replayed: _containers.RepeatedScalarFieldContainer[str]
    lost: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[str] = ..., complete: _Optional[bool] = ..., approvals: _Optional[int] = ..., approvals_needed: _Optional[int] = ..., unverified: _Optional[str] = ..., replayed: _Optional[_Iterable[str]] = ..., lost: _Optional[_Iterable[str]] = ...) -> None: ...

class BreakGlassGrant(_message.Message):
    __slots__ = ("uid", "principal", "key", "reason", "granted_at", "expires_at")
    UID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    uid: int
    principal: str
    key: str
    reason: str
    granted_at: int
    expires_at: int
    def __init__(self, uid: _Optional[int] = ..., principal: _Optional[str] = ..., key: _Optional[str] = ..., reason: _Optional[str] = ..., granted_at: _Optional[int] = ..., expires_at: _Optional[int] = ...) -> None: ...

class IssuedShare(_message.Message):
    __slots__ = ("label", "share", "encrypted")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    label: str
    share: str
    encrypted: bool
    def __init__(self, label: _Optional[str] = ..., share: _Optional[str] = ..., encrypted: _Optional[bool] = ...) -> None: ...

class InitRequest(_message.Message):
    __slots__ = ("shares", "threshold", "recipients", "labels", "user_pin", "so_pin")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    USER_PIN_FIELD_NUMBER: _ClassVar[int]
    SO_PIN_FIELD_NUMBER: _ClassVar[int]
    shares: int
    threshold: int
    recipients: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    user_pin: bytes
    so_pin: bytes
    def __init__(self, shares: _Optional[int] = ..., threshold: _Optional[int] = ..., recipients: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., user_pin: _Optional[bytes] = ..., so_pin: _Optional[bytes] = ...) -> None: ...

class InitResponse(_message.Message):
    __slots__ = ("shares", "set_id", "threshold")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[IssuedShare]
    set_id: str
    threshold: int
    def __init__(self, shares: _Optional[_Iterable[_Union[IssuedShare, _Mapping]]] = ..., set_id: _Optional[str] = ..., threshold: _Optional[int] = ...) -> None: ...

class UnsealRequest(_message.Message):
    __slots__ = ("share", "reset", "accept_restore_window")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_RESTORE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    share: str
    reset: bool
    accept_restore_window: bool
    def __init__(self, share: _Optional[str] = ..., reset: _Optional[bool] = ..., accept_restore_window: _Optional[bool] = ...) -> None: ...

class UnsealResponse(_message.Message):
    __slots__ = ("sealed", "received", "threshold", "set_id")
    SEALED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    sealed: bool
    received: int
    threshold: int
    set_id: str
    def __init__(self, sealed: _Optional[bool] = ..., received: _Optional[int] = ..., threshold: _Optional[int] = ..., set_id: _Optional[str] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SealResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RekeyStartRequest(_message.Message):
    __slots__ = ("shares", "threshold", "recipients", "labels")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    shares: int
    threshold: int
    recipients: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shares: _Optional[int] = ..., threshold: _Optional[int] = ..., recipients: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class RekeyStartResponse(_message.Message):
    __slots__ = ("rekey_id", "current_threshold")
    REKEY_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    rekey_id: str
    current_threshold: int
    def __init__(self, rekey_id: _Optional[str] = ..., current_threshold: _Optional[int] = ...) -> None: ...

class RekeyShareRequest(_message.Message):
    __slots__ = ("share",)
    SHARE_FIELD_NUMBER: _ClassVar[int]
    share: str
    def __init__(self, share: _Optional[str] = ...) -> None: ...

class RekeySubmitResponse(_message.Message):
    __slots__ = ("received", "threshold", "complete", "new_shares", "new_set_id")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    NEW_SHARES_FIELD_NUMBER: _ClassVar[int]
    NEW_SET_ID_FIELD_NUMBER: _ClassVar[int]
    received: int
    threshold: int
    complete: bool
    new_shares: _containers.RepeatedCompositeFieldContainer[IssuedShare]
    new_set_id: str
    def __init__(self, received: _Optional[int] = ..., threshold: _Optional[int] = ..., complete: _Optional[bool] = ..., new_shares: _Optional[_Iterable[_Union[IssuedShare, _Mapping]]] = ..., new_set_id: _Optional[str] = ...) -> None: ...

class RekeyVerifyResponse(_message.Message):
    __slots__ = ("received", "threshold", "committed", "set_id")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    received: int
    threshold: int
    committed: bool
    set_id: str
    def __init__(self, received: _Optional[int] = ..., threshold: _Optional[int] = ..., committed: _Optional[bool] = ..., set_id: _Optional[str] = ...) -> None: ...

class RekeyCancelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RekeyCancelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SealStatus(_message.Message):
    __slots__ = ("phase", "set_id", "shares", "threshold", "received", "rekey_id", "rekey_phase", "rekey_received", "rekey_threshold", "interrupted_rekey", "init_pending")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REKEY_ID_FIELD_NUMBER: _ClassVar[int]
    REKEY_PHASE_FIELD_NUMBER: _ClassVar[int]
    REKEY_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REKEY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_REKEY_FIELD_NUMBER: _ClassVar[int]
    INIT_PENDING_FIELD_NUMBER: _ClassVar[int]
    phase: str
    set_id: str
    shares: int
    threshold: int
    received: int
    rekey_id: str
    rekey_phase: str
    rekey_received: int
    rekey_threshold: int
    interrupted_rekey: bool
    init_pending: bool
    def __init__(self, phase: _Optional[str] = ..., set_id: _Optional[str] = ..., shares: _Optional[int] = ..., threshold: _Optional[int] = ..., received: _Optional[int] = ..., rekey_id: _Optional[str] = ..., rekey_phase: _Optional[str] = ..., rekey_received: _Optional[int] = ..., rekey_threshold: _Optional[int] = ..., interrupted_rekey: _Optional[bool] = ..., init_pending: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenStatus(_message.Message):
    __slots__ = ("label", "serial", "manufacturer", "model", "profile", "session_key_copies", "session_pool_size")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_COPIES_FIELD_NUMBER: _ClassVar[int]
    SESSION_POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    label: str
    serial: str
    manufacturer: str
    model: str
    profile: str
    session_key_copies: bool
    session_pool_size: int
    def __init__(self, label: _Optional[str] = ..., serial: _Optional[str] = ..., manufacturer: _Optional[str] = ..., model: _Optional[str] = ..., profile: _Optional[str] = ..., session_key_copies: _Optional[bool] = ..., session_pool_size: _Optional[int] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("missing_on_token", "orphaned_on_token", "repaired")
    MISSING_ON_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_ON_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    missing_on_token: _containers.RepeatedScalarFieldContainer[str]
    orphaned_on_token: _containers.RepeatedScalarFieldContainer[str]
    repaired: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing_on_token: _Optional[_Iterable[str]] = ..., orphaned_on_token: _Optional[_Iterable[str]] = ..., repaired: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "hsm_health", "hsm_detail", "token", "key_count", "drift", "sealed", "started_at", "seal", "audit_health", "audit_detail", "break_glass", "policy", "caller", "registry_tampering", "hardening", "connections_open", "connections_refused", "connections_timed_out", "dev_mode", "audit_forward", "key_attention", "audit_disk_free_bytes", "audit_disk_size_bytes", "audit_disk_low")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HSM_HEALTH_FIELD_NUMBER: _ClassVar[int]
    HSM_DETAIL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEALTH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DETAIL_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_TAMPERING_FIELD_NUMBER: _ClassVar[int]
    HARDENING_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_OPEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    DEV_MODE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FORWARD_FIELD_NUMBER: _ClassVar[int]
    KEY_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DISK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DISK_LOW_FIELD_NUMBER: _ClassVar[int]
    version: str
    hsm_health: str
    hsm_detail: str
    token: TokenStatus
    key_count: int
    drift: DriftReport
    sealed: bool
    started_at: int
    seal: SealStatus
    audit_health: str
    audit_detail: str
    break_glass: _containers.RepeatedCompositeFieldContainer[BreakGlassGrant]
    policy: str
    caller: str
    registry_tampering: _containers.RepeatedScalarFieldContainer[str]
    hardening: _containers.RepeatedScalarFieldContainer[str]
    connections_open: int
    connections_refused: int
    connections_timed_out: int
    dev_mode: bool
    audit_forward: AuditForwardStatus
    key_attention: _containers.RepeatedCompositeFieldContainer[KeyAttention]
    audit_disk_free_bytes: int
    audit_disk_size_bytes: int
    audit_disk_low: bool
    def __init__(self, version: _Optional[str] = ..., hsm_health: _Optional[str] = ..., hsm_detail: _Optional[str] = ..., token: _Optional[_Union[TokenStatus, _Mapping]] = ..., key_count: _Optional[int] = ..., drift: _Optional[_Union[DriftReport, _Mapping]] = ..., sealed: _Optional[bool] = ..., started_at: _Optional[int] = ..., seal: _Optional[_Union[SealStatus, _Mapping]] = ..., audit_health: _Optional[str] = ..., audit_detail: _Optional[str] = ..., break_glass: _Optional[_Iterable[_Union[BreakGlassGrant, _Mapping]]] = ..., policy: _Optional[str] = ..., caller: _Optional[str] = ..., registry_tampering: _Optional[_Iterable[str]] = ..., hardening: _Optional[_Iterable[str]] = ..., connections_open: _Optional[int] = ..., connections_refused: _Optional[int] = ..., connections_timed_out: _Optional[int] = ..., dev_mode: _Optional[bool] = ..., audit_forward: _Optional[_Union[AuditForwardStatus, _Mapping]] = ..., key_attention: _Optional[_Iterable[_Union[KeyAttention, _Mapping]]] = ..., audit_disk_free_bytes: _Optional[int] = ..., audit_disk_size_bytes: _Optional[int] = ..., audit_disk_low: _Optional[bool] = ...) -> None: ...

class AuditForwardStatus(_message.Message):
    __slots__ = ("target", "connected", "sent", "dropped", "errors", "queued", "lag_seconds", "last_error", "last_drop", "dropped_alerts")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_DROP_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ALERTS_FIELD_NUMBER: _ClassVar[int]
    target: str
    connected: bool
    sent: int
    dropped: int
    errors: int
    queued: int
    lag_seconds: float
    last_error: str
    last_drop: int
    dropped_alerts: int
    def __init__(self, target: _Optional[str] = ..., connected: _Optional[bool] = ..., sent: _Optional[int] = ..., dropped: _Optional[int] = ..., errors: _Optional[int] = ..., queued: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., last_error: _Optional[str] = ..., last_drop: _Optional[int] = ..., dropped_alerts: _Optional[int] = ...) -> None: ...

class KeyAttention(_message.Message):
    __slots__ = ("key", "version", "reason", "encryptions", "hard_limit", "due_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    HARD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    reason: str
    encryptions: int
    hard_limit: int
    due_at: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., encryptions: _Optional[int] = ..., hard_limit: _Optional[int] = ..., due_at: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditHashRequest(_message.Message):
    __slots__ = ("context",)
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    context: _containers.ScalarMap[str, str]
    def __init__(self, context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AuditHashResponse(_message.Message):
    __slots__ = ("hashes",)
    class HashesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HASHES_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.ScalarMap[str, str]
    def __init__(self, hashes: _Optional[_Mapping[str, str]] = ...) -> None: ...
