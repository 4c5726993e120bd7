"""Messages → proto3 JSON values, fast: the gateway's response printer.

``to_json(message)`` returns exactly what ``json_format.MessageToDict(message,
preserving_proto_field_name=False, always_print_fields_with_no_presence=True)`` returns (same
values, same key order), several times faster: the first time a message type is printed, its
descriptor is turned into a table of per-field converters (JSON name, and a function for the
field's type: enum names, int64 as strings, bytes as base64, non-finite floats as strings, maps,
repeated fields, nested messages, RFC 3339 timestamps), and the defaults of the fields without
presence, in declaration order; printing is then one ``ListFields()`` and a dict lookup per set
field.

What the table does not cover is printed by ``json_format`` itself, so the output never
differs: types from ``google/protobuf/*`` other than Timestamp, Duration, FieldMask, Struct,
Value and ListValue (Any, wrappers, Empty, ...) are printed per sub-message by
``MessageToDict``; enums whose values carry options that extensions could rename, extensions,
closed enums with an unknown number, non-finite numbers in a ``Value`` and any other surprise
make the whole message go through ``MessageToDict`` (which then returns the same value or
raises the same error as before).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

_shortest_float: Callable[[float], float] | None
try:  # the helper json_format itself uses for 32-bit floats
    from google.protobuf.internal.type_checkers import ToShortestFloat as _shortest_float
except ImportError:  # pragma: no cover - then float fields go through json_format
    _shortest_float = None

Converter = Callable[[Any], Any]


class _Unsupported(Exception):
    """This value (or type) is printed by json_format instead."""


def reference(message: Message) -> dict:
    """What :func:`to_json` must return: ``json_format`` with the gateway's options."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=False, always_print_fields_with_no_presence=True
    )


def to_json(message: Message) -> dict:
    """A message in proto3 JSON: camelCase names, enums by name, int64 as strings, fields
    without presence printed at their default."""
    try:
        return _printer(cast(Descriptor, message.DESCRIPTOR))(message)
    except Exception:  # noqa: BLE001 - json_format decides: the same value, or its own error
        return reference(message)


_PRINTERS: dict[Descriptor, Converter] = {}

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT32 = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)
_TO_JSON_STRING = frozenset({"google.protobuf.Duration", "google.protobuf.FieldMask"})


def _printer(descriptor: Descriptor) -> Converter:
    found = _PRINTERS.get(descriptor)
    if found is None:
        found = _PRINTERS[descriptor] = _compile(descriptor)
    return found


def _compile(descriptor: Descriptor) -> Converter:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamp
    if name in _TO_JSON_STRING:
        return _to_json_string
    if name == "google.protobuf.Struct":
        return _struct
    if name == "google.protobuf.Value":
        return _value
    if name == "google.protobuf.ListValue":
        return _list_value
    if descriptor.file.name.startswith("google/protobuf/"):
        return reference  # Any, wrappers, Empty, ...: exactly json_format, per sub-message
    try:
        return _regular(descriptor)
    except _Unsupported:
        return reference


def _regular(descriptor: Descriptor) -> Converter:
    fields: dict[FieldDescriptor, tuple[str, Converter]] = {}
    defaults: list[tuple[str, Any, int]] = []  # (name, value, 0 constant / 1 new list / 2 new dict)
    for field in descriptor.fields:
        convert = _field_converter(field)
        fields[field] = (field.json_name, convert)
        if field.has_presence:
            continue
        if _is_map(field):
            defaults.append((field.json_name, None, 2))
        elif field.is_repeated:
            defaults.append((field.json_name, None, 1))
        else:
            defaults.append((field.json_name, _scalar_converter(field)(field.default_value), 0))
    lookup = fields.get

    def print_message(message: Message) -> dict:
        out: dict = {}
        for field, value in message.ListFields():
            entry = lookup(field)
            if entry is None:  # an extension
                raise _Unsupported(field.full_name)
            out[entry[0]] = entry[1](value)
        for name, value, kind in defaults:
            if name not in out:
                out[name] = value if kind == 0 else ([] if kind == 1 else {})
        return out

    return print_message


def _is_map(field: FieldDescriptor) -> bool:
    kind = field.message_type
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and kind is not None
        and kind.has_options
        and kind.GetOptions().map_entry
    )


def _message_type(field: FieldDescriptor) -> Descriptor:
    kind = field.message_type
    if kind is None:
        raise _Unsupported(f"{field.full_name} has no message type")
    return kind


def _enum_type(field: FieldDescriptor) -> EnumDescriptor:
    kind = field.enum_type
    if kind is None:
        raise _Unsupported(f"{field.full_name} has no enum type")
    return kind


def _field_converter(field: FieldDescriptor) -> Converter:
    if _is_map(field):
        entry = _message_type(field)
        key = entry.fields_by_name["key"]
        value = _scalar_converter(entry.fields_by_name["value"])
        if key.type == FieldDescriptor.TYPE_BOOL:

            def map_key(k):
                return "true" if k else "false"
        else:
            map_key = str
        return lambda items: {map_key(k): value(items[k]) for k in items}
    convert = _scalar_converter(field)
    if field.is_repeated:
        return lambda items: [convert(item) for item in items]
    return convert


def _scalar_converter(field: FieldDescriptor) -> Converter:
    """The converter of one value of ``field`` (a message, enum or scalar)."""
    kind = field.type
    if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return _message_converter(_message_type(field))
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_converter(field)
    if kind == FieldDescriptor.TYPE_STRING:
        return _same
    if kind == FieldDescriptor.TYPE_BOOL:
        return bool
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if kind in _INT64:
        return str
    if kind in _INT32:
        return _same
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return _double
    if kind == FieldDescriptor.TYPE_FLOAT and _shortest_float is not None:
        return _float_converter(_shortest_float)
    raise _Unsupported(field.full_name)


def _message_converter(descriptor: Descriptor) -> Converter:
    # Looked up at the first value, not now: message types may refer to themselves.
    printer: list[Converter] = []

    def convert(message: Message) -> Any:
        if not printer:
            printer.append(_printer(descriptor))
        return printer[0](message)

    return convert


def _enum_converter(field: FieldDescriptor) -> Converter:
    enum = _enum_type(field)
    if enum.full_name == "google.protobuf.NullValue":
        return _null
    for value in enum.values:
        if value.has_options and any(option.is_extension for option, _ in value.GetOptions().ListFields()):
            raise _Unsupported(enum.full_name)  # an option such as a custom JSON name
    names = {value.number: value.name for value in enum.values}
    closed = enum.is_closed

    def convert(number: int) -> Any:
        name = names.get(number)
        if name is None:
            if closed:
                raise _Unsupported(f"{enum.full_name} has no value {number}")
            return number
        return name

    return convert


def _same(value):
    return value


def _null(value):
    return None


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _double(value: float) -> Any:
    if value - value == 0:  # finite (inf - inf and nan - nan are nan)
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _float_converter(shortest: Callable[[float], float]) -> Converter:
    def convert(value: float) -> Any:
        if value - value == 0:
            return shortest(value)
        return _double(value)

    return convert


def _to_json_string(message: duration_pb2.Duration | field_mask_pb2.FieldMask) -> str:
    return message.ToJsonString()


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_SECONDS_MIN, _SECONDS_MAX = -62135596800, 253402300799  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z


def _timestamp(message: timestamp_pb2.Timestamp) -> str:
    """``Timestamp.ToJsonString()``, the same text (RFC 3339, Z, 0/3/6/9 fraction digits)
    without building a datetime."""
    seconds, nanos = message.seconds, message.nanos
    if not (_SECONDS_MIN <= seconds <= _SECONDS_MAX and 0 <= nanos < 1_000_000_000):
        raise _Unsupported("Timestamp out of range")  # ToJsonString raises its ValueError
    days, seconds = divmod(seconds, 86400)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{datetime.date.fromordinal(_EPOCH_ORDINAL + days).isoformat()}T{hour:02d}:{minute:02d}:{second:02d}"
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _struct(message: struct_pb2.Struct) -> dict:
    fields = message.fields
    return {key: _value(fields[key]) for key in fields}


def _list_value(message: struct_pb2.ListValue) -> list:
    return [_value(item) for item in message.values]


def _value(message: struct_pb2.Value) -> Any:
    which = message.WhichOneof("kind")
    if which == "string_value":
        return message.string_value
    if which == "number_value":
        number = message.number_value
        if number - number != 0:
            raise _Unsupported("a non-finite number in a Value")  # json_format raises its error
        return number
    if which == "struct_value":
        return _struct(message.struct_value)
    if which == "list_value":
        return _list_value(message.list_value)
    if which == "bool_value":
        return message.bool_value
    return None  # null_value, or nothing set
