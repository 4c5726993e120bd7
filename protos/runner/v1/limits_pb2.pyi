from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
LIMITS_FIELD_NUMBER: _ClassVar[int]
limits: _descriptor.FieldDescriptor
ONEOF_REQUIRED_FIELD_NUMBER: _ClassVar[int]
oneof_required: _descriptor.FieldDescriptor
DEFAULT_MAX_STRING_LEN_FIELD_NUMBER: _ClassVar[int]
default_max_string_len: _descriptor.FieldDescriptor

class FieldLimits(_message.Message):
    __slots__ = ("required", "min", "max", "min_len", "max_len", "min_items", "max_items", "struct_max_depth", "struct_max_keys", "min_seconds", "max_seconds", "pattern", "struct_max_values")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    STRUCT_MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    STRUCT_MAX_KEYS_FIELD_NUMBER: _ClassVar[int]
    MIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    STRUCT_MAX_VALUES_FIELD_NUMBER: _ClassVar[int]
    required: bool
    min: float
    max: float
    min_len: int
    max_len: int
    min_items: int
    max_items: int
    struct_max_depth: int
    struct_max_keys: int
    min_seconds: float
    max_seconds: float
    pattern: str
    struct_max_values: int
    def __init__(self, required: _Optional[bool] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., min_len: _Optional[int] = ..., max_len: _Optional[int] = ..., min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., struct_max_depth: _Optional[int] = ..., struct_max_keys: _Optional[int] = ..., min_seconds: _Optional[float] = ..., max_seconds: _Optional[float] = ..., pattern: _Optional[str] = ..., struct_max_values: _Optional[int] = ...) -> None: ...
