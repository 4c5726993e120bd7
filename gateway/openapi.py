"""``GET /openapi.json``: an OpenAPI 3.1 document generated from the descriptors (pure).

Paths and operations come from the HTTP rules; schemas from the message descriptors in the
proto3 JSON mapping the gateway speaks (camelCase names, enums by name, 64-bit integers as
decimal strings, ``Timestamp`` / ``Duration`` as strings, ``Struct`` as an object). The schema's
limits (``protos/runner/v1/limits.proto``) become JSON-schema constraints:

========================  ==============================================================
limit                     JSON schema
========================  ==============================================================
``max_len`` / ``min_len`` ``maxLength`` / ``minLength`` (and the file's default max length)
``pattern``               ``pattern``
``min`` / ``max``         ``minimum`` / ``maximum`` (64-bit integers: a digits ``pattern``)
``min_items``/``max_items`` ``minItems`` / ``maxItems`` (maps: ``minProperties`` / ``maxProperties``)
``struct_max_keys``       ``maxProperties`` on the Struct (depth only in the description)
``required``              ``required`` (strings also ``minLength: 1``)
``oneof_required``        ``oneOf`` over the members
Duration bounds           in the description
========================  ==============================================================

The schema's comments (``comments``: full name → text, from ``protos/runner/v1/comments.json``,
which ``scripts/gen-protos`` writes, since the generated code keeps no source info) become the
operations' summaries (a method comment's first sentence) and descriptions, the tags'
descriptions (services), and the descriptions of schemas (messages, enums and their values),
properties and parameters (fields); every limit is also said in words in a field's description.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from starlette.responses import Response

from gateway import transcode
from gateway.rules import HttpRule
from protos.runner.v1 import limits_pb2
from protos.validation import field_limits, limit

OPENAPI_VERSION = "3.1.0"
_STATUS = "google.rpc.Status"
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_UNSIGNED = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
_DURATION_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,9})?s$"
#: Well-known types: their proto3 JSON form instead of their fields.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": _DURATION_PATTERN, "description": 'seconds, e.g. "1.5s"'},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "minimum": 0},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def load_comments() -> dict[str, str]:
    """The schema's comments by full name, as ``scripts/gen-protos`` wrote them next to the
    generated code (empty when the file is missing)."""
    from importlib import resources

    try:
        text = resources.files("protos.runner.v1").joinpath("comments.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return {}
    return dict(json.loads(text))


def summary_of(comment: str) -> str:
    """The first sentence of a comment, for an operation's summary.

    >>> summary_of("Accepts a run and returns it. Unknown fields are dropped.")
    'Accepts a run and returns it.'
    """
    first = re.split(r"(?<=[.;:])\s", comment.strip(), maxsplit=1)[0]
    return first.rstrip(";:") + ("." if first.endswith((";", ":")) else "")


def limit_notes(field: FieldDescriptor, limits: limits_pb2.FieldLimits) -> list[str]:
    """The limits of a field in words (the same ones the JSON-schema constraints carry)."""
    notes = []
    if limits.required:
        notes.append("required")
    low, high = limit(limits, "min"), limit(limits, "max")
    if low is not None and high is not None:
        notes.append(f"from {_number(low):,} to {_number(high):,}")
    elif low is not None:
        notes.append(f"at least {_number(low):,}")
    elif high is not None:
        notes.append(f"at most {_number(high):,}")
    min_len, max_len = limit(limits, "min_len"), limit(limits, "max_len")
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    chars = "keys and values at most" if is_map else "at most"
    if min_len:
        notes.append(f"at least {min_len} characters")
    if max_len is not None:
        notes.append(f"{chars} {max_len} characters")
    pattern = limit(limits, "pattern")
    if pattern is not None:
        notes.append(f"matching `{pattern}`")
    items = "entries" if is_map else "items"
    min_items, max_items = limit(limits, "min_items"), limit(limits, "max_items")
    if min_items:
        notes.append(f"at least {min_items} {items}")
    if max_items is not None:
        notes.append(f"at most {max_items} {items}")
    json_notes = _json_notes(limits)
    if json_notes:
        notes.append(json_notes)
    if limit(limits, "struct_max_values") is not None:
        notes.append(f"at most {limits.struct_max_values} values in all")
    return notes


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _describe(target: dict, description: str) -> None:
    """Put ``description`` on a schema or parameter, after what it says already (unless
    ``description`` says that too)."""
    existing = target.get("description", "")
    if description:
        target["description"] = description if existing in description else _join(existing, description)


class _Schemas:
    """Component schemas, one per message and enum type reached from the operations."""

    def __init__(self, comments: Mapping[str, str] | None = None) -> None:
        self.components: dict[str, dict] = {}
        self.comments: Mapping[str, str] = comments or {}

    def describe(self, field: FieldDescriptor) -> str:
        """A field's comment and its limits in words."""
        notes = limit_notes(field, field_limits(field))
        limits_text = ("Limits: " + "; ".join(notes) + ".") if notes else ""
        return _join(self.comments.get(field.full_name, ""), limits_text)

    def message(self, descriptor: Descriptor) -> dict:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive types refer to it
            self.components[name] = self._object(descriptor)
        return _ref(name)

    def enum(self, descriptor: EnumDescriptor) -> dict:
        name = descriptor.full_name
        if name not in self.components:
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in descriptor.values]}
            values = [
                f"- `{v.name}`: {self.comments[f'{name}.{v.name}']}"
                for v in descriptor.values
                if f"{name}.{v.name}" in self.comments
            ]
            description = _join(self.comments.get(name, ""), "\n".join(values))
            if description:
                schema["description"] = description
            self.components[name] = schema
        return _ref(name)

    def _object(self, descriptor: Descriptor) -> dict:
        properties: dict[str, dict] = {}
        required: list[str] = []
        for field in descriptor.fields:
            properties[field.json_name] = self.field(field)
            _describe(properties[field.json_name], self.describe(field))
            limits = field_limits(field)
            if _is_required(field, limits):
                required.append(field.json_name)
        schema: dict = {"type": "object", "properties": properties, "additionalProperties": False}
        if descriptor.full_name in self.comments:
            schema["description"] = self.comments[descriptor.full_name]
        if required:
            schema["required"] = required
        choices: list[dict] = []
        for oneof in descriptor.oneofs:
            if len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name:
                continue  # proto3 `optional`: presence, not a choice
            members: list[dict] = [{"required": [f.json_name]} for f in oneof.fields]
            options: Any = oneof.GetOptions()  # extension options: no static types
            if not options.Extensions[limits_pb2.oneof_required]:
                members.append({"not": {"anyOf": [{"required": [f.json_name]} for f in oneof.fields]}})
            choices.append({"oneOf": members})
        if len(choices) == 1:
            schema.update(choices[0])
        elif choices:
            schema["allOf"] = choices
        return schema

    def field(self, field: FieldDescriptor) -> dict:
        limits = field_limits(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self._single(value, limits)}
            key_schema = self._scalar(key, limits_pb2.FieldLimits(), for_key=True)
            if key_schema:
                schema["propertyNames"] = key_schema
            _put(schema, "minProperties", limit(limits, "min_items"))
            _put(schema, "maxProperties", limit(limits, "max_items"))
            return schema
        if field.is_repeated:
            schema = {"type": "array", "items": self._single(field, limits)}
            _put(schema, "minItems", limit(limits, "min_items"))
            _put(schema, "maxItems", limit(limits, "max_items"))
            if limits.required and "minItems" not in schema:
                schema["minItems"] = 1
            return schema
        return self._single(field, limits)

    def _single(self, field: FieldDescriptor, limits: limits_pb2.FieldLimits) -> dict:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            message_type = field.message_type
            assert message_type is not None  # a message field has its type
            schema = dict(self.message(message_type))
            if message_type.full_name == "google.protobuf.Struct":
                _put(schema, "maxProperties", limit(limits, "struct_max_keys"))
            notes = _json_notes(limits)
            if notes:
                schema["description"] = notes
            return schema
        if field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None  # an enum field has its type
            return self.enum(field.enum_type)
        return self._scalar(field, limits)

    def _scalar(self, field: FieldDescriptor, limits: limits_pb2.FieldLimits, for_key: bool = False) -> dict:
        kind = field.type
        low, high = limit(limits, "min"), limit(limits, "max")
        if kind == FieldDescriptor.TYPE_STRING:
            schema = {"type": "string"}
            max_len = limit(limits, "max_len")
            if max_len is None:
                max_len = _file_default_max(field)
            min_len = limit(limits, "min_len")
            if limits.required and not min_len:
                min_len = 1
            _put(schema, "minLength", min_len)
            _put(schema, "maxLength", max_len)
            _put(schema, "pattern", limit(limits, "pattern"))
            return schema
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "string", "enum": ["true", "false"]} if for_key else {"type": "boolean"}
        if kind in _INT64 or for_key:
            negative = kind not in _UNSIGNED and not (low is not None and low >= 0) and kind not in _UINT32
            digits = "{1,18}" if kind in _INT64 else "{1,9}"
            return {
                "type": "string",
                "format": "int64" if kind in _INT64 else "int32",
                "pattern": f"^{'-?' if negative else ''}[0-9]{digits}$",
            }
        if kind in _INT32 or kind in _UINT32:
            schema = {"type": "integer", "format": "int32"}
            if kind in _UINT32:
                low = 0 if low is None else max(low, 0)
                high = 4294967295 if high is None else high
            else:
                low = -(2**31) if low is None else low
                high = 2**31 - 1 if high is None else high
            schema["minimum"], schema["maximum"] = _number(low), _number(high)
            return schema
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            schema = {"type": "number"}
            _put(schema, "minimum", _number(low) if low is not None else None)
            _put(schema, "maximum", _number(high) if high is not None else None)
            return schema
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {}


def _put(schema: dict, key: str, value) -> None:
    if value is not None:
        schema[key] = value


def _number(value: float):
    return int(value) if float(value).is_integer() else value


def _file_default_max(field: FieldDescriptor) -> int | None:
    owner = field.containing_type
    assert owner is not None  # a field of a message, not an extension
    options: Any = owner.file.GetOptions()  # extension options: no static types
    if options.HasExtension(limits_pb2.default_max_string_len):
        return options.Extensions[limits_pb2.default_max_string_len] or None
    return None


def _is_required(field: FieldDescriptor, limits: limits_pb2.FieldLimits) -> bool:
    """Must the field appear in JSON for the request to be valid?"""
    if field.is_repeated or field.containing_oneof is not None:
        return bool(limits.required) and not field.is_repeated
    if limits.required:
        return True
    # A number whose bounds exclude zero (its default) cannot be left out.
    low, high = limit(limits, "min"), limit(limits, "max")
    return field.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING) and (
        (low is not None and low > 0) or (high is not None and high < 0)
    )


def _json_notes(limits: limits_pb2.FieldLimits) -> str:
    notes = []
    if limit(limits, "struct_max_depth") is not None:
        notes.append(f"nesting depth at most {limits.struct_max_depth}")
    if limit(limits, "struct_max_keys") is not None:
        notes.append(f"at most {limits.struct_max_keys} keys per object")
    low, high = limit(limits, "min_seconds"), limit(limits, "max_seconds")
    if low is not None or high is not None:
        notes.append(f"duration between {_number(low or 0)}s and {_number(high) if high is not None else '∞'}s")
    return "; ".join(notes)


def _openapi_path(rule: HttpRule) -> str:
    out = rule.template
    for name in rule.variables:
        start = out.index("{" + name)
        out = out[:start] + "{" + name + "}" + out[out.index("}", start) + 1 :]
    return out


def _field_at(descriptor: Descriptor, dotted: str) -> FieldDescriptor:
    """The field at a dotted path of field names (KeyError when there is none)."""
    current: Descriptor | None = descriptor
    field = None
    for name in dotted.split("."):
        if current is None:
            raise KeyError(dotted)
        field = current.fields_by_name[name]
        current = field.message_type
    if field is None:
        raise KeyError(dotted)
    return field


def _query_parameters(schemas: _Schemas, descriptor: Descriptor, skip: set[str], prefix: str = "", depth: int = 0):
    """Query parameters for every field not bound elsewhere: scalars, enums, repeated scalars,
    well-known string types, and (dotted) fields of nested messages; named by their proto
    field paths (``page_size``), as the SPEC writes them (JSON names are accepted too)."""
    for field in descriptor.fields:
        path = prefix + field.name
        if path in skip:
            continue
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            continue  # maps have no query form
        if message is not None and message.full_name not in _WELL_KNOWN:
            if depth < 3 and not field.is_repeated:
                yield from _query_parameters(schemas, message, skip, path + ".", depth + 1)
            continue
        if message is not None and "type" not in _WELL_KNOWN[message.full_name]:
            continue  # Value: no query form
        schema = schemas.field(field)
        parameter: dict[str, Any] = {"name": path, "in": "query", "schema": schema}
        _describe(parameter, schemas.describe(field))
        if field.is_repeated:
            parameter.update(style="form", explode=True)
        yield parameter


def _operation(schemas: _Schemas, rule: HttpRule, operation_id: str) -> dict:
    descriptor = cast(Descriptor, rule.input_type.DESCRIPTOR)
    parameters = []
    for name in rule.variables:
        field = _field_at(descriptor, name)
        schema = schemas.field(field)
        if schema.get("type") == "string":
            schema = {**schema, "pattern": schema.get("pattern", r"^[^/]+$")}
        parameter = {"name": name, "in": "path", "required": True, "schema": schema}
        _describe(parameter, schemas.describe(field))
        parameters.append(parameter)
    comment = schemas.comments.get(f"{rule.service}.{rule.method}", "")
    operation: dict = {
        "operationId": operation_id,
        "tags": [rule.service.rsplit(".", 1)[-1]],
        "summary": summary_of(comment) if comment else f"{rule.service}.{rule.method}",
        "description": _join(comment, f"gRPC: `{rule.service}/{rule.method}`."),
    }
    skip = set(rule.variables)
    if rule.body == "*":
        body_schema = schemas.message(descriptor)
        if rule.variables:
            # The path carries those fields: the body is the rest of the message.
            full = schemas.components[descriptor.full_name]
            body_schema = {
                **{k: v for k, v in full.items() if k not in ("properties", "required")},
                "properties": {k: v for k, v in full["properties"].items() if k not in _json_names(descriptor, skip)},
            }
            if "required" in full:
                body_schema["required"] = [r for r in full["required"] if r not in _json_names(descriptor, skip)]
        operation["requestBody"] = {
            "required": "required" in schemas.components[descriptor.full_name],
            "content": {"application/json": {"schema": body_schema}},
        }
    elif rule.body:
        field = descriptor.fields_by_name[rule.body]
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas.field(field)}}}
        skip.add(rule.body)
        parameters += list(_query_parameters(schemas, descriptor, skip))
    else:
        parameters += list(_query_parameters(schemas, descriptor, skip))
    if rule.server_streaming and transcode.RESUME_FIELD in descriptor.fields_by_name:
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": f"SSE resume point: the seq of the last event received (sets {transcode.RESUME_FIELD})",
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    output = cast(Descriptor, rule.output_type.DESCRIPTOR)
    result = schemas.field(output.fields_by_name[rule.response_body]) if rule.response_body else schemas.message(output)
    status = schemas.message(_status_descriptor())
    if rule.server_streaming:
        ok = {
            "description": "a stream: NDJSON lines by default, Server-Sent Events for Accept: text/event-stream",
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "type": "object",
                        "properties": {"result": result, "error": status},
                        "additionalProperties": False,
                    }
                },
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": result}}}
    error = {"content": {"application/json": {"schema": status}}}
    operation["responses"] = {
        "200": ok,
        "400": {"description": "invalid request (google.rpc.BadRequest lists the fields)", **error},
        "404": {"description": "not found", **error},
        **(
            {
                "413": {"description": "request body too large", **error},
                "415": {"description": "request body not sent as application/json", **error},
            }
            if rule.body
            else {}
        ),
        "429": {"description": "resource exhausted; see Retry-After", **error},
        "431": {"description": "request headers too large, too many, or too much metadata", **error},
        "503": {"description": "the runner is unavailable; see Retry-After", **error},
        "504": {"description": "deadline exceeded", **error},
        "default": {"description": "an error as google.rpc.Status", **error},
    }
    return operation


def _json_names(descriptor: Descriptor, names: set[str]) -> set[str]:
    return {descriptor.fields_by_name[n].json_name for n in names if n in descriptor.fields_by_name}


def _status_descriptor() -> Descriptor:
    from google.rpc import status_pb2

    return status_pb2.Status.DESCRIPTOR


def _health_paths() -> dict:
    probe = {
        "type": "object",
        "properties": {"status": {"type": "string"}, "detail": {"type": "string"}, "upstream": {"type": "string"}},
    }

    def get(operation_id: str, summary: str, codes: tuple[str, ...]) -> dict:
        content = {"application/json": {"schema": probe}}
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["Health"],
                "summary": summary,
                "responses": {code: {"description": summary, "content": content} for code in codes},
            }
        }

    return {
        "/health/live": get("Health_Live", "the gateway process answers (no upstream call)", ("200",)),
        "/health/ready": get("Health_Ready", "the runner's grpc.health.v1 readiness", ("200", "503")),
        "/health": get("Health_Both", "liveness and readiness", ("200", "503")),
    }


def document(
    rules: Iterable[HttpRule],
    title: str = "runner.v1 REST gateway",
    version: str = "1",
    comments: Mapping[str, str] | None = None,
) -> dict:
    """The OpenAPI document for ``rules`` (plus the health probes); ``comments`` (full name →
    text, see :func:`load_comments`) describe the operations, tags, schemas and fields."""
    schemas = _Schemas(comments)
    paths: dict[str, dict] = {}
    seen: dict[str, int] = {}
    tags: dict[str, str] = {}
    default_max: set[int] = set()
    for rule in rules:
        options: Any = cast(Descriptor, rule.input_type.DESCRIPTOR).file.GetOptions()
        if options.HasExtension(limits_pb2.default_max_string_len):
            default_max.add(options.Extensions[limits_pb2.default_max_string_len])
        tags.setdefault(rule.service.rsplit(".", 1)[-1], schemas.comments.get(rule.service, ""))
        base = f"{rule.service.rsplit('.', 1)[-1]}_{rule.method}"
        seen[base] = seen.get(base, 0) + 1
        operation_id = base if seen[base] == 1 else f"{base}_{seen[base] - 1}"
        paths.setdefault(_openapi_path(rule), {})[rule.verb.lower()] = _operation(schemas, rule, operation_id)
    paths.update(_health_paths())
    tag_list = [{"name": name, **({"description": text} if text else {})} for name, text in tags.items()]
    tag_list.append({"name": "Health", "description": "HTTP probes answered by the gateway."})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the google.api.http annotations of the schema. JSON follows the "
            "proto3 JSON mapping. Headers: Grpc-Timeout (deadline), Authorization, traceparent, x-request-id, "
            "Grpc-Metadata-* (gRPC metadata). "
            + (
                f"Every string is at most {max(default_max):,} characters unless its field says less. "
                if default_max
                else ""
            )
            + "A request breaking a limit is answered 400 with a google.rpc.BadRequest listing the fields. "
            "Degraded answers (429 QUEUE_FULL, 503 CIRCUIT_OPEN / DRAINING / DB_UNAVAILABLE) carry Retry-After.",
        },
        "tags": tag_list,
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.components.items()))},
    }


def response(doc: dict) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), media_type="application/json")
