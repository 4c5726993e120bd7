"""REST ↔ protobuf transcoding per ``google.api.http`` (pure functions, no I/O).

Requests: the body (``*``: the whole message; a field name: that field), then query parameters
(only for fields the body does not carry), then path variables (last, so the URL wins), all
through the proto3 JSON mapping of ``google.protobuf.json_format``:

- field paths with dots (``spec.diagnostic.ticks=3``), proto names or JSON names;
- a repeated field takes every occurrence of its parameter (``values=1&values=2``);
- enums by name (``state=RUNNING``) or number; int64 as decimal strings; ``Duration`` as
  ``"1.5s"``, ``Timestamp`` as RFC 3339; bools as ``true``/``false`` (also ``1``/``0``);
- unknown fields, in the body or the query, are errors (``ignore_unknown_fields=False``);
- so is a key given twice in one JSON object of the body (``json.loads`` would keep the last);
- a body is JSON only when its ``Content-Type`` says so (:func:`is_json_media_type`).

Responses use proto3 JSON with camelCase names (``preserving_proto_field_name=False``, the
mapping's standard, what grpc-gateway and Envoy emit) and with fields without presence printed
even at their default (``"cancelRequested": false``), so a REST caller sees every field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from gateway import protojson
from gateway.rules import HttpRule

FieldViolation: TypeAlias = error_details_pb2.BadRequest.FieldViolation

#: The request field a ``Last-Event-ID`` header fills (WatchRun's resume point).
RESUME_FIELD = "after_seq"

_NO_FIELD = re.compile(r'no field named "([^"]+)" at "([^"]+)"')
_AT = re.compile(r' at "([^"]+)"')
_FAILED = re.compile(r"^Failed to parse (\w+) field")


class TranscodeError(ValueError):
    """The HTTP request does not map onto the RPC's request message."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        first = violations[0]
        super().__init__(f"{first.field}: {first.description}" if first.field else first.description)


def build_request(
    rule: HttpRule,
    path_params: dict[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
    last_event_id: str | None = None,
) -> Message:
    """The request message for ``rule`` from the parts of an HTTP request.

    >>> from protos.runner.v1 import runner_pb2
    >>> from gateway import rules
    >>> rule = next(r for r in rules.load([runner_pb2.DESCRIPTOR]) if r.method == "ListRuns")
    >>> build_request(rule, {}, [("pageSize", "5"), ("state", "RUNNING")], b"").state == runner_pb2.RUNNING
    True

    Raises TranscodeError (with field violations) for a body that is not JSON or does not fit
    the message, an unknown field, a value of the wrong type, or several values for a singular
    field. Schema limits are not checked here (``protos.validation`` does that).
    """
    message = rule.input_type()
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if rule.body:
        document = _json_body(body)
        if rule.body == "*":
            _parse(document, message, "")
        else:
            field = descriptor.fields_by_name[rule.body]
            _parse({field.json_name: document}, message, "")
    if rule.body != "*":
        bound = set(rule.variables) | ({rule.body} if rule.body else set())
        tree = _tree(descriptor, _grouped(query, bound))
        if tree:
            _parse(tree, message, "")
    if last_event_id and RESUME_FIELD in descriptor.fields_by_name:
        _parse({RESUME_FIELD: last_event_id.strip()}, message, "Last-Event-ID")
    if path_params:
        direct = _direct_fields(descriptor)
        rest: dict[str, list[str]] = {}
        for name, value in path_params.items():
            if name in direct and value.isascii():
                # What json_format would do for an ASCII string (no surrogates to refuse).
                setattr(message, name, value)
            else:
                rest[name] = [value]
        if rest:
            _parse(_tree(descriptor, rest), message, "")
    return message


def is_json_media_type(content_type: str) -> bool:
    """True for ``application/json``, alone or with ``charset=utf-8`` (any case, spaces).

    >>> [is_json_media_type(v) for v in ("application/json", "Application/JSON; charset=UTF-8", "text/plain")]
    [True, True, False]
    >>> is_json_media_type("application/json; charset=latin-1"), is_json_media_type("application/jsonx")
    (False, False)
    """
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    if not params.strip():
        return True
    name, _, value = params.partition("=")
    return name.strip().lower() == "charset" and value.strip().strip('"').lower() == "utf-8"


def response_json(rule: HttpRule, response: Message) -> Any:
    """The JSON value (dicts, lists, ...) of a response, or of its ``response_body`` field."""
    if rule.response_body:
        field = response.DESCRIPTOR.fields_by_name[rule.response_body]
        return message_json(response)[field.json_name] if response.HasField(rule.response_body) else None
    return message_json(response)


def message_json(message: Message) -> dict:
    """A message in proto3 JSON: camelCase names, enums by name, defaults printed (what
    ``json_format.MessageToDict`` returns with those options, by :mod:`gateway.protojson`)."""
    return protojson.to_json(message)


_DIRECT: dict[str, frozenset[str]] = {}


def _direct_fields(descriptor: Descriptor) -> frozenset[str]:
    """Names of the singular string fields of a message, outside any oneof: a path variable
    naming one is set as it is, without going through json_format."""
    found = _DIRECT.get(descriptor.full_name)
    if found is None:
        found = _DIRECT[descriptor.full_name] = frozenset(
            field.name
            for field in descriptor.fields
            if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated and field.containing_oneof is None
        )
    return found


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: ``json.loads`` would keep the last
    value, so ``{"spec": {...}, "spec": {...}}`` could carry one spec past a check of another."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"the body has the key {json.dumps(key)} twice in one JSON object")
            seen.add(key)
    return out


def _json_body(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise TranscodeError([FieldViolation(field="", description=str(exc))]) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TranscodeError([FieldViolation(field="", description=f"the body is not valid JSON: {exc}")]) from None


def _grouped(query: Iterable[tuple[str, str]], bound: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in query:
        if key in bound:
            continue  # fields bound by the path or the body are not read from the query
        out.setdefault(key, []).append(value)
    return out


def _tree(descriptor: Descriptor, params: dict[str, list[str]]) -> dict:
    """Dotted parameters → a nested JSON object, each leaf converted for its field type."""
    tree: dict = {}
    for dotted, values in params.items():
        names = dotted.split(".")
        node: dict = tree
        current: Descriptor | None = descriptor
        field = None
        for depth, name in enumerate(names):
            field = _field(current, name) if current is not None else None
            if depth < len(names) - 1:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise TranscodeError([FieldViolation(field=dotted, description="conflicting parameters")])
                node = child
                current = field.message_type if field is not None else None
        node[names[-1]] = _leaf(dotted, field, values)
    return tree


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    return field


def _leaf(dotted: str, field: FieldDescriptor | None, values: list[str]) -> Any:
    if field is not None and field.is_repeated:
        return [_scalar(field, value) for value in values]
    if len(values) > 1:
        raise TranscodeError(
            [FieldViolation(field=dotted, description=f"{len(values)} values given for a field that takes one")]
        )
    return _scalar(field, values[0])


def _scalar(field: FieldDescriptor | None, value: str) -> Any:
    if field is not None and field.type == FieldDescriptor.TYPE_BOOL:
        return {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
    return value


def _parse(document: Any, message: Message, where: str) -> None:
    if not isinstance(document, dict):
        raise TranscodeError(
            [FieldViolation(field=where, description=f"expected a JSON object for {message.DESCRIPTOR.name}")]
        )
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        # ParseError for what json_format recognises; the others for shapes it does not expect.
        raise TranscodeError(
            [FieldViolation(field=where or _field_of(str(exc)), description=_first_line(exc))]
        ) from None


def _field_of(text: str) -> str:
    """Best effort: the field path a json_format error names, without the message type."""
    found = _NO_FIELD.search(text)
    if found:
        path = found.group(2).split(".", 1)[1:] + [found.group(1)]
        return ".".join(path)
    found = _AT.search(text)
    if found and "." in found.group(1):
        return found.group(1).split(".", 1)[1]
    found = _FAILED.search(text)
    return found.group(1) if found else ""


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]
