from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncryptRequest(_message.Message):
    __slots__ = ("key", "plaintext", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    plaintext: bytes
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("key", "key_id", "key_version", "ciphertext_blob")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_id: str
    key_version: int
    ciphertext_blob: bytes
    def __init__(self, key: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., ciphertext_blob: _Optional[bytes] = ...) -> None: ...

class BatchEncryptRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[EncryptRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[EncryptRequest, _Mapping]]] = ...) -> None: ...

class BatchEncryptResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: EncryptResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[EncryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchEncryptResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchEncryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchEncryptResult, _Mapping]]] = ...) -> None: ...

class WatchKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyEvent(_message.Message):
    __slots__ = ("kind", "key", "key_id", "state")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[KeyEvent.Kind]
        HEARTBEAT: _ClassVar[KeyEvent.Kind]
        CHANGED: _ClassVar[KeyEvent.Kind]
        RESET: _ClassVar[KeyEvent.Kind]
    KIND_UNSPECIFIED: KeyEvent.Kind
    HEARTBEAT: KeyEvent.Kind
    CHANGED: KeyEvent.Kind
    RESET: KeyEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    kind: KeyEvent.Kind
    key: str
    key_id: str
    state: str
    def __init__(self, kind: _Optional[_Union[KeyEvent.Kind, str]] = ..., key: _Optional[str] = ..., key_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ReEncryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "encryption_context", "destination_key", "destination_encryption_context", "replace_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DestinationEncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_KEY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    encryption_context: _containers.ScalarMap[str, str]
    destination_key: str
    destination_encryption_context: _containers.ScalarMap[str, str]
    replace_context: bool
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., destination_key: _Optional[str] = ..., destination_encryption_context: _Optional[_Mapping[str, str]] = ..., replace_context: _Optional[bool] = ...) -> None: ...

class ReEncryptResponse(_message.Message):
    __slots__ = ("source_key", "source_key_version", "key", "key_id", "key_version", "ciphertext_blob")
    SOURCE_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    source_key: str
    source_key_version: int
    key: str
    key_id: str
    key_version: int
    ciphertext_blob: bytes
    def __init__(self, source_key: _Optional[str] = ..., source_key_version: _Optional[int] = ..., key: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., ciphertext_blob: _Optional[bytes] = ...) -> None: ...

class BatchReEncryptRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ReEncryptRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ReEncryptRequest, _Mapping]]] = ...) -> None: ...

class BatchReEncryptResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: ReEncryptResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[ReEncryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchReEncryptResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchReEncryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchReEncryptResult, _Mapping]]] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateDataKeyResponse(_message.Message):
    __slots__ = ("key", "key_id", "key_version", "plaintext", "ciphertext_blob")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_id: str
    key_version: int
    plaintext: bytes
    ciphertext_blob: bytes
    def __init__(self, key: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., plaintext: _Optional[bytes] = ..., ciphertext_blob: _Optional[bytes] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "encryption_context", "key")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    encryption_context: _containers.ScalarMap[str, str]
    key: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., key: _Optional[str] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("key", "key_id", "key_version", "plaintext")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_id: str
    key_version: int
    plaintext: bytes
    def __init__(self, key: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., plaintext: _Optional[bytes] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "field", "key_state")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    KEY_STATE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    key_state: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., key_state: _Optional[str] = ...) -> None: ...

class BatchGenerateDataKeyRequest(_message.Message):
    __slots__ = ("requests", "without_plaintext")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GenerateDataKeyRequest]
    without_plaintext: bool
    def __init__(self, requests: _Optional[_Iterable[_Union[GenerateDataKeyRequest, _Mapping]]] = ..., without_plaintext: _Optional[bool] = ...) -> None: ...

class BatchGenerateDataKeyResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: GenerateDataKeyResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[GenerateDataKeyResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchGenerateDataKeyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchGenerateDataKeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchGenerateDataKeyResult, _Mapping]]] = ...) -> None: ...

class BatchDecryptRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecryptRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DecryptRequest, _Mapping]]] = ...) -> None: ...

class BatchDecryptResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: DecryptResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[DecryptResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchDecryptResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchDecryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchDecryptResult, _Mapping]]] = ...) -> None: ...
