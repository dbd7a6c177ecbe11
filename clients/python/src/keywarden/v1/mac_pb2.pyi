from keywarden.v1 import datakey_pb2 as _datakey_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateMacRequest(_message.Message):
    __slots__ = ("key", "data", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    key_version: int
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class GenerateMacResponse(_message.Message):
    __slots__ = ("key", "key_id", "key_version", "mac")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_id: str
    key_version: int
    mac: bytes
    def __init__(self, key: _Optional[str] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., mac: _Optional[bytes] = ...) -> None: ...

class VerifyMacRequest(_message.Message):
    __slots__ = ("key", "data", "mac", "key_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    mac: bytes
    key_version: int
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., mac: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class VerifyMacResponse(_message.Message):
    __slots__ = ("valid", "key", "key_version")
    VALID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    key: str
    key_version: int
    def __init__(self, valid: _Optional[bool] = ..., key: _Optional[str] = ..., key_version: _Optional[int] = ...) -> None: ...

class BatchGenerateMacRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GenerateMacRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[GenerateMacRequest, _Mapping]]] = ...) -> None: ...

class BatchGenerateMacResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: GenerateMacResponse
    error: _datakey_pb2.ItemError
    def __init__(self, ok: _Optional[_Union[GenerateMacResponse, _Mapping]] = ..., error: _Optional[_Union[_datakey_pb2.ItemError, _Mapping]] = ...) -> None: ...

class BatchGenerateMacResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchGenerateMacResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchGenerateMacResult, _Mapping]]] = ...) -> None: ...
