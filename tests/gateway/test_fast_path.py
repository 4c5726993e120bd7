"""The gateway's fast paths give what the slow ones gave: the response printer against
``json_format``, path variables set directly against ``ParseDict``, the dispatcher against
Starlette's router, and the raw JSON answer against Starlette's JSONResponse."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import random

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import JSONResponse
from starlette.routing import Match

from gateway import protojson, routing, rules, transcode
from gateway import settings as gateway_settings
from gateway.app import create_app
from protos.runner.v1 import runner_pb2 as pb

RULES = rules.load([pb.DESCRIPTOR])
BY_METHOD = {rule.method: rule for rule in RULES}

# ------------------------------------------------------------------ a message with every kind of field

F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "f_double": F.TYPE_DOUBLE,
    "f_float": F.TYPE_FLOAT,
    "f_int64": F.TYPE_INT64,
    "f_uint64": F.TYPE_UINT64,
    "f_int32": F.TYPE_INT32,
    "f_fixed64": F.TYPE_FIXED64,
    "f_fixed32": F.TYPE_FIXED32,
    "f_bool": F.TYPE_BOOL,
    "f_string": F.TYPE_STRING,
    "f_bytes": F.TYPE_BYTES,
    "f_uint32": F.TYPE_UINT32,
    "f_sfixed32": F.TYPE_SFIXED32,
    "f_sfixed64": F.TYPE_SFIXED64,
    "f_sint32": F.TYPE_SINT32,
    "f_sint64": F.TYPE_SINT64,
}
_WELL_KNOWN = {
    "f_timestamp": ".google.protobuf.Timestamp",
    "f_duration": ".google.protobuf.Duration",
    "f_struct": ".google.protobuf.Struct",
    "f_value": ".google.protobuf.Value",
    "f_list": ".google.protobuf.ListValue",
    "f_any": ".google.protobuf.Any",
    "f_wrapped": ".google.protobuf.Int64Value",
    "f_mask": ".google.protobuf.FieldMask",
    "f_empty": ".google.protobuf.Empty",
}


_WELL_KNOWN_FILES = ("timestamp", "duration", "struct", "any", "wrappers", "field_mask", "empty")


def _every_kind_class():
    """A proto3 message type with a field of every kind, added to the default pool (where the
    well-known types and the Any payloads live)."""
    pool = descriptor_pool.Default()
    for module in _WELL_KNOWN_FILES:
        importlib.import_module(f"google.protobuf.{module}_pb2")
    file = descriptor_pb2.FileDescriptorProto(name="gateway_test/every_kind.proto", package="gwtest", syntax="proto3")
    file.dependency.extend(f"google/protobuf/{module}.proto" for module in _WELL_KNOWN_FILES)
    enum = file.enum_type.add(name="Color")
    for number, name in enumerate(["COLOR_UNSPECIFIED", "RED", "GREEN"]):
        enum.value.add(name=name, number=number)
    message = file.message_type.add(name="EveryKind")
    number = 0

    def add(name, kind, label=F.LABEL_OPTIONAL, type_name=None, **extra):
        nonlocal number
        number += 1
        field = message.field.add(name=name, number=number, type=kind, label=label, **extra)
        if type_name:
            field.type_name = type_name
        return field

    for name, kind in _SCALARS.items():
        add(name, kind)
        add("r_" + name[2:], kind, F.LABEL_REPEATED)
    add("f_color", F.TYPE_ENUM, type_name=".gwtest.Color")
    add("r_color", F.TYPE_ENUM, F.LABEL_REPEATED, type_name=".gwtest.Color")
    add("f_child", F.TYPE_MESSAGE, type_name=".gwtest.EveryKind")
    add("r_child", F.TYPE_MESSAGE, F.LABEL_REPEATED, type_name=".gwtest.EveryKind")
    for name, type_name in _WELL_KNOWN.items():
        add(name, F.TYPE_MESSAGE, type_name=type_name)
    add("r_timestamp", F.TYPE_MESSAGE, F.LABEL_REPEATED, type_name=".google.protobuf.Timestamp")
    add("r_value", F.TYPE_MESSAGE, F.LABEL_REPEATED, type_name=".google.protobuf.Value")
    # optional (proto3 presence) and a oneof
    message.oneof_decl.add(name="choice")
    add("c_string", F.TYPE_STRING, oneof_index=0)
    add("c_child", F.TYPE_MESSAGE, type_name=".gwtest.EveryKind", oneof_index=0)
    message.oneof_decl.add(name="_o_int32")  # synthetic oneofs come last
    add("o_int32", F.TYPE_INT32, oneof_index=1, proto3_optional=True)
    # maps
    keys = [("string", F.TYPE_STRING), ("int64", F.TYPE_INT64), ("bool", F.TYPE_BOOL), ("int32", F.TYPE_INT32)]
    for key_name, key_kind in keys:
        for value_name, value_kind, value_type in [
            ("string", F.TYPE_STRING, None),
            ("double", F.TYPE_DOUBLE, None),
            ("color", F.TYPE_ENUM, ".gwtest.Color"),
            ("child", F.TYPE_MESSAGE, ".gwtest.EveryKind"),
            ("bytes", F.TYPE_BYTES, None),
        ]:
            entry_name = f"M{key_name.title()}{value_name.title()}Entry"
            entry = message.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=key_kind, label=F.LABEL_OPTIONAL)
            value = entry.field.add(name="value", number=2, type=value_kind, label=F.LABEL_OPTIONAL)
            if value_type:
                value.type_name = value_type
            map_type = f".gwtest.EveryKind.{entry_name}"
            add(f"m_{key_name}_{value_name}", F.TYPE_MESSAGE, F.LABEL_REPEATED, type_name=map_type)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("gwtest.EveryKind"))


EveryKind = _every_kind_class()

_FLOATS = [0.0, -0.0, 1.5, -2.25, 1e300, 3.4e38, 1e-7, 0.1, math.inf, -math.inf, math.nan, 123456789.0]
_STRINGS = ["", "a", "é ü", "日本", 'quote"back\\slash', "\x00\x1f", "emoji 🙂"]


def _scalar(rng: random.Random, kind: int, enum=False):
    if enum:
        return rng.choice([0, 1, 2, 2, 7])  # 7: an unknown number (open enum)
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return rng.choice(_FLOATS)
    if kind == F.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == F.TYPE_STRING:
        return rng.choice(_STRINGS)
    if kind == F.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return rng.choice([0, 1, 2**53 + 1, 2**64 - 1])
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if kind in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return rng.choice([0, -1, 7, 2**31 - 1, -(2**31)])
    return rng.choice([0, -1, 7, 2**63 - 1, -(2**63)])


def _json_value(rng: random.Random, depth: int):
    choice = rng.randrange(6 if depth < 3 else 4)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1.5, -3, 1e20])
    if choice == 3:
        return rng.choice(_STRINGS)
    if choice == 4:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {f"k{i}": _json_value(rng, depth + 1) for i in range(rng.randrange(3))}


def _fill(rng: random.Random, message, depth: int = 0) -> None:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        name, kind = field.name, field.type
        if kind == F.TYPE_MESSAGE and field.message_type.name == "EveryKind":
            if depth < 2:
                if field.is_repeated:
                    for _ in range(rng.randrange(3)):
                        _fill(rng, getattr(message, name).add(), depth + 1)
                else:
                    _fill(rng, getattr(message, name), depth + 1)
                    getattr(message, name).SetInParent()
            continue
        if name.startswith("m_"):
            value_field = field.message_type.fields_by_name["value"]
            key_field = field.message_type.fields_by_name["key"]
            target = getattr(message, name)
            for _ in range(rng.randrange(3)):
                key = _scalar(rng, key_field.type)
                if value_field.type == F.TYPE_MESSAGE:
                    if depth < 2:
                        _fill(rng, target[key], depth + 1)
                else:
                    target[key] = _scalar(rng, value_field.type, value_field.type == F.TYPE_ENUM)
            continue
        if kind == F.TYPE_MESSAGE:
            _fill_well_known(rng, field, message)
            continue
        values = [_scalar(rng, kind, kind == F.TYPE_ENUM) for _ in range(rng.randrange(1, 4))]
        if field.is_repeated:
            getattr(message, name).extend(values)
        else:
            setattr(message, name, values[0])


def _fill_well_known(rng: random.Random, field, message) -> None:
    name, type_name = field.name, field.message_type.full_name
    target = getattr(message, name)
    if type_name == "google.protobuf.Timestamp":
        seconds = [0, 1, -1, 59, 86399, 86400, -86401, 951782400, 1_700_000_000, -62135596800, 253402300799]
        nanos = [0, 1, 1000, 1_000_000, 120_000_000, 999_999_999, 123_456_789, 5_000]
        stamps = [timestamp_pb2.Timestamp(seconds=rng.choice(seconds), nanos=rng.choice(nanos)) for _ in range(2)]
        (target.extend(stamps) if field.is_repeated else target.CopyFrom(stamps[0]))
    elif type_name == "google.protobuf.Duration":
        seconds, nanos = rng.choice([(0, 0), (5, 0), (5, 500_000_000), (-5, -500_000_000), (0, -1000), (1, 1)])
        target.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    elif type_name == "google.protobuf.Struct":
        target.update({f"k{i}": _json_value(rng, 1) for i in range(rng.randrange(4))})
        target.SetInParent()
    elif type_name == "google.protobuf.Value":
        for _ in range(2 if field.is_repeated else 1):
            holder = struct_pb2.Value()
            json_format.ParseDict(_json_value(rng, 0), holder)
            (target.add().CopyFrom(holder) if field.is_repeated else target.CopyFrom(holder))
    elif type_name == "google.protobuf.ListValue":
        target.extend([_json_value(rng, 1) for _ in range(rng.randrange(3))])
        target.SetInParent()
    elif type_name == "google.protobuf.Any":
        target.Pack(error_details_pb2.ErrorInfo(reason="R", metadata={"a": "b"}))
    elif type_name == "google.protobuf.Int64Value":
        target.value = rng.choice([0, 5, -(2**63)])
        target.SetInParent()
    elif type_name == "google.protobuf.FieldMask":
        target.paths.extend(["a_b", "c"])
    else:
        target.SetInParent()


def _same(message, fast: bool = False) -> None:
    """to_json(message) is json_format's answer; with ``fast``, without falling back to it."""
    try:
        expected = protojson.reference(message)
    except Exception as exc:
        with pytest.raises(type(exc)):
            protojson.to_json(message)
        return
    got = protojson._printer(message.DESCRIPTOR)(message) if fast else protojson.to_json(message)
    # Same values and the same key order, and the same bytes once encoded.
    assert json.dumps(got, sort_keys=False) == json.dumps(expected, sort_keys=False)


@pytest.mark.parametrize("seed", range(300))
def test_printer_matches_json_format_on_every_kind_of_field(seed):
    rng = random.Random(seed)
    message = EveryKind()
    _fill(rng, message)
    _same(message, fast=True)


def test_printer_matches_json_format_on_the_schemas_messages():
    runs = [
        pb.Run(),
        pb.Run(run_id="r", state=pb.RUNNING, attempt=2, labels={"a": "b", "é": "ü"}, kind="diagnostic"),
        pb.Run(state=99),  # an unknown enum number
    ]
    full = pb.Run(run_id="r1", state=pb.FAILED, cancel_requested=True, replica="x", request_id="q")
    full.spec.diagnostic.ticks = 3
    full.progress.done, full.progress.total, full.progress.fraction = 2, 3, 2 / 3
    for stamp in (full.create_time, full.start_time, full.end_time, full.update_time):
        stamp.FromNanoseconds(1_700_000_000_123_456_789)
    full.timeout.FromMilliseconds(1500)
    full.result.update({"a": [1, {"b": None}], "c": "d"})
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    full.error.CopyFrom(status_pb2.Status(code=8, message="full", details=[detail]))
    runs.append(full)
    bad = pb.Run()
    bad.result["x"] = math.nan  # json_format refuses NaN in a Value: the same error
    runs.append(bad)
    for message in runs[:-1]:
        _same(message, fast=True)
    _same(bad)
    for message_type in pb.DESCRIPTOR.message_types_by_name.values():
        _same(message_factory.GetMessageClass(message_type)())
    # proto2 with closed enums, extensions (google.api.http, limits) and nested options
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    _same(file)
    _same(descriptor_pb2.FieldDescriptorProto(type=F.TYPE_INT32, label=F.LABEL_OPTIONAL))


def test_timestamps_out_of_range_are_json_formats_errors():
    for seconds, nanos in [(-62135596801, 0), (253402300800, 0), (0, -1), (0, 1_000_000_000)]:
        message = EveryKind()
        message.f_timestamp.seconds, message.f_timestamp.nanos = seconds, nanos
        _same(message)
    rng = random.Random(7)
    for _ in range(2000):
        stamp = timestamp_pb2.Timestamp(seconds=rng.randrange(-62135596800, 253402300800), nanos=rng.randrange(10**9))
        assert protojson._timestamp(stamp) == stamp.ToJsonString()


def test_response_body_field():
    rule = BY_METHOD["GetRun"]
    assert transcode.response_json(rule, pb.Run(run_id="r")) == protojson.reference(pb.Run(run_id="r"))


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize("value", ["abc", "r-42", "", "é", "\udcff", "a b", "x" * 100])
def test_path_variables_set_directly_match_parse_dict(value):
    for method in ("GetRun", "CancelRun", "WatchRun"):
        rule = BY_METHOD[method]
        expected = rule.input_type()
        try:
            json_format.ParseDict({"run_id": value}, expected)
        except json_format.ParseError:
            with pytest.raises(transcode.TranscodeError):
                transcode.build_request(rule, {"run_id": value}, [], b"")
            continue
        assert transcode.build_request(rule, {"run_id": value}, [], b"") == expected


# ------------------------------------------------------------------ dispatch


def _scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/runs/abc"),
        ("GET", "/v1/runs"),
        ("POST", "/v1/runs"),
        ("POST", "/v1/runs:execute"),
        ("POST", "/v1/runs/abc:cancel"),
        ("GET", "/v1/runs/abc/events"),
        ("GET", "/v1/runs/abc:cancel"),
        ("DELETE", "/v1/runs"),
        ("HEAD", "/v1/runs/abc"),
        ("GET", "/v1/runs/a/b"),
        ("GET", "/health/live"),
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("GET", "/nope"),
        ("GET", "/v1/admin/status"),
        ("POST", "/v1/admin/workers:restart"),
        ("GET", "/v1/summary"),
        ("GET", "/v1/scenarios"),
    ],
)
def test_dispatcher_takes_what_the_router_would_serve_and_nothing_else(method, path):
    app = create_app(gateway_settings.from_env({}))
    scope = _scope(method, path)
    full = None
    for route in app.routes:  # Starlette's router: the first full match wins
        match, child = route.matches(scope)
        if match == Match.FULL:
            full = (route, child.get("path_params", {}))
            break
    found = app._dispatch(scope)
    if full is None or not isinstance(full[0], routing.RpcRoute):
        assert found is None
    else:
        assert found is not None and found[0] is full[0] and found[1] == full[1]


def test_json_reply_sends_what_starlette_json_response_sends():
    content = {"runId": "r", "é": ["ü", 1.5, None, True], "n": {"x": "\u2028"}}
    headers = {"grpc-metadata-served-by": "r1", "x-request-id": "abc"}

    def sent(response) -> list:
        out = []

        async def send(message):
            out.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        asyncio.run(response({"type": "http"}, receive, send))
        return out

    assert sent(routing.JsonReply(content, headers)) == sent(JSONResponse(content, headers=headers))


def test_receive_body_limits_and_disconnects():
    from starlette.requests import ClientDisconnect

    from gateway import errors

    def receiver(*messages):
        queue = list(messages)

        async def receive():
            return queue.pop(0)

        return receive

    def run(coroutine):
        return asyncio.run(coroutine)

    chunks = receiver(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert run(routing.receive_body(chunks, None, 4)) == b"abcd"
    assert run(routing.receive_body(receiver({"type": "http.request"}), "0", 4)) == b""
    with pytest.raises(errors.GatewayError) as caught:
        run(routing.receive_body(receiver(), "5", 4))  # refused before reading
    assert caught.value.http_status == 413
    too_much = receiver(
        {"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.request", "body": b"de"}
    )
    with pytest.raises(errors.GatewayError) as caught:
        run(routing.receive_body(too_much, None, 4))
    assert caught.value.http_status == 413
    with pytest.raises(errors.GatewayError) as caught:
        run(routing.receive_body(receiver(), "12x", 4))
    assert caught.value.http_status == 400
    gone = receiver({"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        run(routing.receive_body(gone, None, 4))
