"""Request limits written in the schema, enforced from the generated descriptors.

One validator for the runner and the gateway. The rules come from the options in
``protos/runner/v1/limits.proto``:

- ``(runner.v1.limits)`` on a field (``FieldLimits``),
- ``(runner.v1.oneof_required)`` on a oneof,
- ``(runner.v1.default_max_string_len)`` on a file: an upper bound on every string of every
  message in that file -- repeated elements, map keys and values, and the keys and string values
  inside ``google.protobuf.Struct`` / ``Value`` / ``ListValue`` fields included -- unless the
  field sets its own ``max_len``.

Usage::

    violations = validate(request)          # [] when the request is valid
    if violations:
        details = bad_request(violations)   # google.rpc.BadRequest
    check(request)                          # or: raises ValidationError (a ValueError)

Semantics, rule by rule:

- ``required``: a non-empty string, a present message (``HasField``), a non-zero number or
  enum, a true bool, at least one item in a repeated field or map.
- ``min`` / ``max`` (numbers): inclusive, checked on every message, so the zero default takes
  part (``max_ticks`` has ``min: 1``: an unset ``max_ticks`` is a violation). Fields with
  explicit presence (proto3 ``optional``, oneof members) are checked only when set. NaN breaks
  any bound.
- ``min_len`` / ``max_len`` / ``pattern`` (strings): length in characters (``len(str)``, code
  points); the pattern must match the whole value (``re.fullmatch``) and is not applied to the
  empty string (proto3's "unset"; use ``required`` or ``min_len`` to forbid it). On repeated
  fields these apply to each element; on maps to each value, and ``max_len`` also to string keys.
- ``min_items`` / ``max_items``: number of elements of a repeated field or entries of a map.
- ``min_seconds`` / ``max_seconds``: inclusive bounds on a ``google.protobuf.Duration``, checked
  only when the field is present; a present bounded Duration must also be well formed (nanos in
  range and of the same sign as seconds).
- ``struct_max_depth`` / ``struct_max_keys`` on ``Struct``, ``Value`` and ``ListValue`` fields
  (on a repeated one, each element on its own). **Depth** counts the containers -- Structs *and*
  ListValues -- on the deepest path: ``{a: 1}`` has depth 1, ``{a: {b: 1}}`` depth 2,
  ``{a: [1]}`` depth 2, ``{a: [{b: 1}]}`` depth 3; a scalar ``Value`` has depth 0 and a ``Value``
  holding a Struct or a list has depth 1. The walk does not descend below the limit and reports
  the depth once per field (per element of a repeated field), on the field itself, with the
  place where the limit was crossed in the description. **Keys** are counted per Struct at every
  level and reported on that Struct's path. ``struct_max_keys`` does not limit list lengths.
- ``oneof_required``: one member must be set (protobuf guarantees at most one); the violation
  names the oneof, e.g. ``spec.kind``.

Paths use the proto field names: ``spec.diagnostic.ticks``, ``labels["k"]``,
``spec.sweep.values[3]``, ``spec.simulation.config_overrides.a.b`` (a Struct key not made only of
letters, digits, ``_`` and ``-`` is written ``["a.b"]``; keys longer than 64 characters are
shortened in paths).

How: the first time a message type is validated, its descriptor is turned into the source of
one Python function that checks exactly the fields that have limits or can contain limited
things (strings under a file default, nested messages whose own check is not empty), with each
bound inlined as a constant; the function is cached by the type's full name. The valid path is a
few attribute reads and comparisons; building a violation is left to small reporting functions.
Struct walks are iterative, so no input can exhaust the Python stack. At most
``MAX_VIOLATIONS`` violations are returned (the gRPC trailer carrying them is size-limited);
the walk stops there.

Schema mistakes (a limit on a field type it does not apply to, a bad pattern) raise
``SchemaError`` when a message type is first compiled; the tests compile every message type of
the schema, so this cannot happen while serving.
"""

from __future__ import annotations

import json
import keyword
import re
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias, cast

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from protos.runner.v1 import limits_pb2

FieldViolation: TypeAlias = error_details_pb2.BadRequest.FieldViolation

#: The most violations :func:`validate` returns for one message.
MAX_VIOLATIONS = 20

_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_JSON_TYPES = (_STRUCT, _VALUE, _LIST_VALUE)

_MAX_DURATION_SECONDS = 315_576_000_000  # the range google.protobuf.Duration documents
_NANOS = 1_000_000_000
_PATH_KEY_MAX = 64
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


class SchemaError(Exception):
    """A limit in the schema that this validator cannot apply (a bug in the .proto file)."""


class ValidationError(ValueError):
    """A message breaks limits of the schema; ``violations`` lists them."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = list(violations)
        first = self.violations[0] if self.violations else None
        text = f"{first.field}: {first.description}" if first is not None else "invalid message"
        if len(self.violations) > 1:
            text += f" (and {len(self.violations) - 1} more)"
        super().__init__(text)


def validate(message: Message) -> list[FieldViolation]:
    """Every limit ``message`` breaks (at most MAX_VIOLATIONS); ``[]`` when it is valid.

    Never raises for a message of a schema that compiles (see ``compile_plan``).
    """
    run = _RUN_BY_CLASS.get(message.__class__)
    if run is None:
        run = _RUN_BY_CLASS[message.__class__] = compile_plan(cast(Descriptor, message.DESCRIPTOR)).run
    out: list[FieldViolation] = []
    try:
        run(message, "", out)
    except _Full:
        pass
    return out


def bad_request(violations: list[FieldViolation]) -> error_details_pb2.BadRequest:
    """The ``google.rpc.BadRequest`` detail listing ``violations``."""
    return error_details_pb2.BadRequest(field_violations=violations)


def check(message: Message) -> None:
    """Raise ValidationError if ``message`` breaks any limit; return None otherwise."""
    violations = validate(message)
    if violations:
        raise ValidationError(violations)


# ------------------------------------------------------------------ plans


class _Full(Exception):
    """Raised when MAX_VIOLATIONS violations were collected; stops the walk."""


def _add(out: list, field: str, description: str) -> None:
    out.append(FieldViolation(field=field, description=description))
    if len(out) >= MAX_VIOLATIONS:
        raise _Full


def _run_nothing(message, prefix, out) -> None:
    return None


class _Plan:
    """The compiled check of one message type.

    ``run(message, prefix, out)`` appends the violations of ``message`` to ``out``, naming
    fields ``prefix + name``; ``source`` is its generated Python source. ``empty`` is None
    while the plan is being compiled (a recursive type may meet itself), then whether it
    checks nothing.
    """

    __slots__ = ("empty", "name", "run", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.run: Callable[[Any, str, list], None] = _run_nothing
        self.source = ""
        self.empty: bool | None = None

    def __repr__(self) -> str:
        return f"<validation plan {self.name}{' (empty)' if self.empty else ''}>"


_PLANS: dict[str, _Plan] = {}  # by descriptor full name
_RUN_BY_CLASS: dict[type, Callable[[Any, str, list], None]] = {}
_INLINE_DEPTH = 8  # nested message types are inlined this deep, then called


def compile_plan(descriptor: Descriptor) -> _Plan:
    """The (cached) plan of a message type, compiling it and the types it reaches if needed.

    Raises SchemaError if the schema carries a limit that does not fit its field.
    """
    plan = _PLANS.get(descriptor.full_name)
    if plan is not None:
        return plan
    session: dict[str, _Plan] = {}
    plan = _compile_message(descriptor, session)
    _PLANS.update(session)  # publish only complete plans
    return plan


def _compile_message(descriptor: Descriptor, session: dict[str, _Plan]) -> _Plan:
    plan = _Plan(descriptor.full_name)
    session[descriptor.full_name] = plan  # before the fields: recursive types find it
    gen = _Generator(session)
    lines = gen.message(descriptor, 0, _Prefix("prefix", ""), (descriptor.full_name,))
    plan.empty = not lines
    if lines:
        plan.source = "def run(m0, prefix, out):\n" + "\n".join(_indent(lines)) + "\n"
        code = compile(plan.source, f"<validation of {descriptor.full_name}>", "exec")
        exec(code, gen.names)
        plan.run = gen.names["run"]
    return plan


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class _Prefix:
    """The path prefix of a message being checked, as generated code: ``expr + lit``.

    It is only evaluated when a violation is reported."""

    __slots__ = ("expr", "lit")

    def __init__(self, expr: str, lit: str) -> None:
        self.expr, self.lit = expr, lit

    def code(self) -> str:
        return f"{self.expr} + {self.lit!r}" if self.lit else self.expr

    def path(self, name: str) -> str:
        return f"{self.expr} + {self.lit + name!r}"

    def child(self, name: str) -> _Prefix:
        return _Prefix(self.expr, self.lit + name + ".")

    def element(self, name: str, seg: str) -> _Prefix:
        return _Prefix(f"_path({self.code()}, {name!r}, {seg})", ".")


_STRING_RULES = {"min_len", "max_len", "pattern"}
_NUMBER_RULES = {"min", "max"}
_DURATION_RULES = {"min_seconds", "max_seconds"}
_JSON_RULES = {"struct_max_depth", "struct_max_keys", "struct_max_values", "max_len"}
_ITEM_RULES = {"min_items", "max_items"}


class _Generator:
    """Writes the source of one plan: the checks of a message type, with nested message types
    inlined (up to _INLINE_DEPTH, and never a type inside itself), bounds as literals.

    Variables of nesting level d are suffixed with d: m<d> the message, v<d> a value,
    x<d> a repeated field or map, i<d>/k<d> an index/key, w<d> a oneof case, s<d>/n<d> a
    Duration's seconds and nanos.
    """

    def __init__(self, session: dict[str, _Plan]) -> None:
        self.session = session
        self.names: dict[str, Any] = {"_add": _add, "_items": _items, "_path": _path}

    def const(self, value: Any) -> str:
        """An expression for ``value``: a literal for numbers, else a name bound to it."""
        if type(value) is int or (type(value) is float and value == value and abs(value) != float("inf")):
            return repr(value)
        name = f"_c{len(self.names)}"
        self.names[name] = value
        return name

    # -- messages and fields

    def message(self, descriptor: Descriptor, d: int, prefix: _Prefix, stack: tuple[str, ...]) -> list[str]:
        """Lines checking message ``m<d>`` of type ``descriptor``; [] when nothing to check."""
        default_max = _file_default_max(descriptor)
        proto3_optional = _proto3_optional_fields(descriptor)
        lines: list[str] = []
        members: dict[str, list[tuple[str, list[str]]]] = {}
        for field in descriptor.fields:
            oneof = field.containing_oneof
            in_oneof = oneof is not None and field.name not in proto3_optional
            field_lines = self.field(field, default_max, d, prefix, stack, known_present=in_oneof)
            if oneof is not None and in_oneof:
                if field_lines:
                    members.setdefault(oneof.name, []).append((field.name, field_lines))
            else:
                lines += field_lines
        for oneof in descriptor.oneofs:
            if len(oneof.fields) == 1 and oneof.fields[0].name in proto3_optional:
                continue  # the synthetic oneof of a proto3 `optional` field
            required = bool(_extension(oneof.GetOptions(), limits_pb2.oneof_required))
            member_lines = members.get(oneof.name, [])
            if not required and not member_lines:
                continue
            lines.append(f"w{d} = m{d}.WhichOneof({oneof.name!r})")
            lines.append(f"if w{d} is None:")
            if required:
                names = ", ".join(f.name for f in oneof.fields)
                message = self.const(f"exactly one of {names} must be set")
                lines.append(f"    _add(out, {prefix.path(oneof.name)}, {message})")
            else:
                lines.append("    pass")
            for name, body in member_lines:
                lines.append(f"elif w{d} == {name!r}:")
                lines += _indent(body)
        return lines

    def field(
        self, field: FieldDescriptor, default_max, d: int, prefix: _Prefix, stack, known_present: bool
    ) -> list[str]:
        """Lines checking ``field`` of ``m<d>``; [] when it has nothing to check."""
        limits = field_limits(field)
        used = {f.name for f, _ in limits.ListFields()}
        required = limits.required
        name = field.name
        m = f"m{d}"
        get = f"{m}.{name}" if not keyword.iskeyword(name) else f"getattr({m}, {name!r})"

        if field.is_repeated and field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            value_check, value_rules = self.element(value_field, limits, default_max, stack, field.full_name)
            _require_only(field.full_name, used, {"required", "max_len"} | _ITEM_RULES | value_rules)
            key_check = None
            if key_field.type == FieldDescriptor.TYPE_STRING:
                key_check = self.string_check(None, limit(limits, "max_len") or default_max, None, "key ")
            min_items = limit(limits, "min_items") or (1 if required else None)
            lines = [f"x{d} = {get}"]
            lines += self.items(d, prefix, name, min_items, limit(limits, "max_items"), "entr")
            body, used_checks = [], []
            key_lines = [] if key_check is None else key_check.lines(f"k{d}", d, prefix, name, f"k{d}")
            if key_lines:
                body += key_lines
                used_checks.append(key_check)
            value_lines = [] if value_check is None else value_check.lines(f"v{d}", d, prefix, name, f"k{d}")
            if value_lines:
                body += [f"v{d} = x{d}[k{d}]"] + value_lines
                used_checks.append(value_check)
            if not body:
                return lines if len(lines) > 1 else []
            return lines + self.unless_small(d, [f"for k{d} in x{d}:"] + _indent(body), used_checks)

        check, rules = self.element(field, limits, default_max, stack, field.full_name)
        if field.is_repeated:
            _require_only(field.full_name, used, {"required"} | _ITEM_RULES | rules)
            min_items = limit(limits, "min_items") or (1 if required else None)
            lines = [f"x{d} = {get}"]
            lines += self.items(d, prefix, name, min_items, limit(limits, "max_items"), "item")
            body = [] if check is None else check.lines(f"v{d}", d, prefix, name, f"i{d}")
            if not body:
                return lines if len(lines) > 1 else []
            return lines + self.unless_small(d, [f"for i{d}, v{d} in enumerate(x{d}):"] + _indent(body), [check])

        _require_only(field.full_name, used, {"required"} | rules)
        required_msg = self.const("is required")
        if check is not None and check.inline is not None:  # no need for a v<d> variable
            body = check.lines(get, d, prefix, name, "None")
        else:
            check_value = [] if check is None else check.lines(f"v{d}", d, prefix, name, "None")
            body = [f"v{d} = {get}"] + check_value if check_value else []
            if required and field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE:
                body = [f"v{d} = {get}", f"if not v{d}:", f"    _add(out, {prefix.path(name)}, {required_msg})"]
                if check_value:
                    body += ["else:"] + _indent(check_value)
        if not body and not required:
            return []
        if known_present or not field.has_presence:
            return body
        if not body:  # a required message with nothing to check inside
            return [f"if not {m}.HasField({name!r}):", f"    _add(out, {prefix.path(name)}, {required_msg})"]
        lines = [f"if {m}.HasField({name!r}):"] + _indent(body)
        if required:
            lines += ["else:", f"    _add(out, {prefix.path(name)}, {required_msg})"]
        return lines

    def items(self, d: int, prefix: _Prefix, name: str, min_items, max_items, noun: str) -> list[str]:
        if min_items is None and max_items is None:
            return []
        tests = []
        if max_items is not None:
            tests.append(f"len(x{d}) > {max_items}")
        if min_items is not None:
            tests.append(f"len(x{d}) < {min_items}")
        return [
            f"if {' or '.join(tests)}:",
            f"    _items(len(x{d}), {min_items!r}, {max_items!r}, {noun!r}, {prefix.code()}, {name!r}, out)",
        ]

    def unless_small(self, d: int, loop: list[str], checks: list) -> list[str]:
        """Guard a loop whose only checks are upper bounds on string lengths: a string of N
        characters takes at least N bytes, so in a message of at most N bytes none is longer
        than N. One ByteSize() is much cheaper than visiting every entry of a map."""
        bounds = [c.max_only for c in checks if c is not None]
        if not bounds or any(b is None for b in bounds):
            return [f"if x{d}:"] + _indent(loop)
        return [f"if x{d} and m{d}.ByteSize() > {min(bounds)}:"] + _indent(loop)

    # -- values

    def element(self, field, limits, default_max, stack, where: str) -> tuple[_Check | None, set[str]]:
        """The check of one value of ``field``, and the rule names it honours."""
        if field.type == FieldDescriptor.TYPE_STRING:
            pattern = None
            if limits.HasField("pattern"):
                try:
                    pattern = re.compile(limits.pattern)
                except re.error as exc:
                    raise SchemaError(f"{where}: bad pattern {limits.pattern!r}: {exc}") from None
            max_len = limit(limits, "max_len") or default_max
            return self.string_check(limit(limits, "min_len"), max_len, pattern), _STRING_RULES
        if field.type in _INTEGER_TYPES or field.type in _FLOAT_TYPES:
            low, high = limit(limits, "min"), limit(limits, "max")
            is_float = field.type in _FLOAT_TYPES
            if not is_float:  # compare ints with ints where the bound allows
                low, high = _as_int(low), _as_int(high)
            if low is None and high is None:
                return None, _NUMBER_RULES
            # Written as not(...) so that NaN fails every guard and reaches the report.
            if low is not None and high is not None:
                guard = f"not ({self.const(low)} <= {{v}} <= {self.const(high)})"
            elif low is not None:
                guard = f"not ({{v}} >= {self.const(low)})"
            else:
                guard = f"not ({{v}} <= {self.const(high)})"
            return _Check(guard=guard, report=self.const(_number_report(low, high, is_float))), _NUMBER_RULES
        if field.type == FieldDescriptor.TYPE_ENUM:
            # proto3 enums are open: an undefined number parses, and is refused here.
            defined = frozenset(v.number for v in field.enum_type.values)
            report = self.const(_enum_report(field.enum_type))
            return _Check(guard=f"{{v}} not in {self.const(defined)}", report=report), set()
        if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE:
            return None, set()  # bool, bytes: only `required`
        type_name = field.message_type.full_name
        if type_name == _DURATION:
            min_s, max_s = limit(limits, "min_seconds"), limit(limits, "max_seconds")
            if min_s is None and max_s is None:
                return None, _DURATION_RULES
            return _Check(duration=(min_s, max_s), report=self.const(_duration_report(min_s, max_s))), _DURATION_RULES
        if type_name in _JSON_TYPES:
            max_str = limit(limits, "max_len") or default_max
            max_depth, max_keys = limit(limits, "struct_max_depth"), limit(limits, "struct_max_keys")
            max_values = limit(limits, "struct_max_values")
            if max_str is None and max_depth is None and max_keys is None and max_values is None:
                return None, _JSON_RULES
            report = _json_report(type_name, max_depth, max_keys, max_str, max_values)
            return _Check(report=self.const(report)), _JSON_RULES
        return self.nested(field.message_type, stack), set()

    def string_check(self, min_len, max_len, pattern, what: str = "") -> _Check | None:
        if min_len is None and max_len is None and pattern is None:
            return None
        tests = []
        if min_len is not None and max_len is not None:
            tests.append(f"not ({min_len} <= len({{v}}) <= {max_len})")
        elif max_len is not None:
            tests.append(f"len({{v}}) > {max_len}")
        elif min_len is not None:
            tests.append(f"len({{v}}) < {min_len}")
        if pattern is not None:
            tests.append(f"({{v}} and {self.const(pattern.fullmatch)}({{v}}) is None)")
        report = self.const(_string_report(min_len, max_len, pattern, what))
        max_only = max_len if min_len is None and pattern is None else None
        return _Check(guard=" or ".join(tests), report=report, max_only=max_only)

    def nested(self, descriptor: Descriptor, stack: tuple[str, ...]) -> _Check | None:
        """Inline a nested message type's checks, or call its own plan when it is recursive
        or nested too deep. None when it checks nothing."""
        name = descriptor.full_name
        if name not in stack and len(stack) < _INLINE_DEPTH:
            return _Check(inline=(self, descriptor, stack + (name,)))
        plan = _PLANS.get(name) or self.session.get(name) or _compile_message(descriptor, self.session)
        if plan.empty:
            return None
        if plan.empty is None:  # still being compiled (a recursive type): look its function up late
            return _Check(call=self.const(plan) + ".run")
        return _Check(call=self.const(plan.run))


class _Check:
    """How generated code checks one value. One of:

    - ``inline``: (generator, descriptor, stack): a nested message's checks, inlined;
    - ``call``: an expression naming a plan's function, called with the message;
    - ``duration``: (min_s, max_s): inline Duration bounds, ``report`` explains;
    - ``guard``: an expression of ``{v}`` true when the value may break a rule, then ``report``
      explains (decides, and appends the violations); no guard: always call ``report``.

    ``max_only``: the only rule is this upper bound on a string's length.
    """

    def __init__(self, guard=None, report=None, inline=None, call=None, duration=None, max_only=None) -> None:
        self.guard, self.report, self.inline, self.call = guard, report, inline, call
        self.duration, self.max_only = duration, max_only

    def lines(self, value: str, d: int, prefix: _Prefix, name: str, seg: str) -> list[str]:
        """Lines checking ``value`` (an expression) found at ``prefix`` + name (+ seg)."""
        inner = prefix.child(name) if seg == "None" else prefix.element(name, seg)
        if self.inline is not None:
            gen, descriptor, stack = self.inline
            body = gen.message(descriptor, d + 1, inner, stack)
            return [f"m{d + 1} = {value}"] + body if body else []
        if self.call is not None:
            return [f"{self.call}({value}, {inner.code()}, out)"]
        report = f"{self.report}({value}, {prefix.code()}, {name!r}, {seg}, out)"
        if self.duration is not None:
            return _duration_lines(value, d, self.duration) + ["    " + report]
        if self.guard is None:
            return [report]
        return [f"if {self.guard.format(v=value)}:", "    " + report]


def _duration_lines(value: str, d: int, bounds) -> list[str]:
    """The guard of a bounded Duration: true if out of bounds or not well formed."""
    min_s, max_s = bounds
    s, n = f"s{d}", f"n{d}"
    tests = []
    if min_s is not None:
        tests.append(f"{s} * {_NANOS} + {n} < {round(min_s * _NANOS)}")
    if max_s is not None:
        tests.append(f"{s} * {_NANOS} + {n} > {round(max_s * _NANOS)}")
    tests += [
        f"not (-{_NANOS} < {n} < {_NANOS})",
        f"({s} > 0 and {n} < 0)",
        f"({s} < 0 and {n} > 0)",
        f"not (-{_MAX_DURATION_SECONDS} <= {s} <= {_MAX_DURATION_SECONDS})",
    ]
    return [f"{s} = {value}.seconds", f"{n} = {value}.nanos", f"if {' or '.join(tests)}:"]


def _extension(options: Any, extension: Any) -> Any:
    """An extension's value on an options message, or None when it is not set.
    (The generated stubs type extensions as plain FieldDescriptors, hence Any.)"""
    return options.Extensions[extension] if options.HasExtension(extension) else None


def _file_default_max(descriptor: Descriptor) -> int | None:
    return _extension(descriptor.file.GetOptions(), limits_pb2.default_max_string_len) or None


def _proto3_optional_fields(descriptor: Descriptor) -> frozenset[str]:
    if not any(len(o.fields) == 1 for o in descriptor.oneofs):
        return frozenset()
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return frozenset(f.name for f in proto.field if f.proto3_optional)


def field_limits(field: FieldDescriptor) -> limits_pb2.FieldLimits:
    """The (runner.v1.limits) option of a field; empty when it has none."""
    found = _extension(field.GetOptions(), limits_pb2.limits)
    return found if found is not None else limits_pb2.FieldLimits()


def limit(limits: limits_pb2.FieldLimits, name: str):
    """One bound of a FieldLimits, or None when it is not set."""
    return getattr(limits, name) if limits.HasField(name) else None


def _as_int(bound: float | None):
    if bound is not None and bound.is_integer():
        return int(bound)
    return bound


def _require_only(where: str, used: set[str], allowed: set[str]) -> None:
    extra = used - allowed
    if extra:
        raise SchemaError(f"{where}: limits {sorted(extra)} do not apply to this field")


# ------------------------------------------------------------------ reporting (the slow path)
#
# A report function is called with (value, prefix, name, seg, out) when a guard says the value
# may break a rule; it decides and appends the violations. The value's path is
# _path(prefix, name, seg): seg is None (the field itself), an int ("[3]") or a map key.


def _items(count: int, min_items, max_items, noun: str, prefix: str, name: str, out: list) -> None:
    if max_items is not None and count > max_items:
        _add(out, prefix + name, f"must have at most {max_items} {_plural(noun, max_items)} (got {count})")
    elif min_items is not None and count < min_items:
        _add(out, prefix + name, f"must have at least {min_items} {_plural(noun, min_items)} (got {count})")


def _plural(noun: str, count: int) -> str:
    if noun == "entr":
        return "entry" if count == 1 else "entries"
    return noun if count == 1 else noun + "s"


def _string_report(min_len, max_len, pattern, what: str):
    def report_string(value, prefix, name, seg, out):
        length = len(value)
        if max_len is not None and length > max_len:
            _add(out, _path(prefix, name, seg), f"{what}must be at most {max_len} characters long (got {length})")
        elif min_len is not None and length < min_len:
            _add(out, _path(prefix, name, seg), f"{what}must be at least {min_len} characters long (got {length})")
        elif pattern is not None and value and pattern.fullmatch(value) is None:
            _add(out, _path(prefix, name, seg), f"{what}must match the pattern {pattern.pattern!r}")

    return report_string


def _number_report(low, high, is_float: bool):
    at_least = f"must be at least {_number(low)} (got " if low is not None else ""
    at_most = f"must be at most {_number(high)} (got " if high is not None else ""

    def report_number(value, prefix, name, seg, out):
        if is_float and value != value:
            _add(out, _path(prefix, name, seg), "must be a number (got NaN)")
        elif low is not None and value < low:
            _add(out, _path(prefix, name, seg), at_least + _number(value) + ")")
        elif high is not None and value > high:
            _add(out, _path(prefix, name, seg), at_most + _number(value) + ")")

    return report_number


def _duration_report(min_seconds, max_seconds):
    low = None if min_seconds is None else round(min_seconds * _NANOS)
    high = None if max_seconds is None else round(max_seconds * _NANOS)
    at_least = f"must be at least {_seconds(low)} (got " if low is not None else ""
    at_most = f"must be at most {_seconds(high)} (got " if high is not None else ""

    def report_duration(value, prefix, name, seg, out):
        seconds, nanos = value.seconds, value.nanos
        if (
            abs(seconds) > _MAX_DURATION_SECONDS
            or abs(nanos) >= _NANOS
            or (seconds > 0 and nanos < 0)
            or (seconds < 0 and nanos > 0)
        ):
            _add(out, _path(prefix, name, seg), f"is not a valid duration (seconds={seconds}, nanos={nanos})")
            return
        total = seconds * _NANOS + nanos
        if low is not None and total < low:
            _add(out, _path(prefix, name, seg), at_least + _seconds(total) + ")")
        elif high is not None and total > high:
            _add(out, _path(prefix, name, seg), at_most + _seconds(total) + ")")

    return report_duration


def _enum_report(enum_type):
    names = ", ".join(v.name for v in enum_type.values)

    def report_enum(value, prefix, name, seg, out):
        _add(out, _path(prefix, name, seg), f"must be one of {names} (got {value})")

    return report_enum


def _json_report(type_name: str, max_depth, max_keys, max_str, max_values=None):
    """Depth, keys per Struct and string lengths of a Struct, Value or ListValue."""
    no_limit = float("inf")
    max_depth = no_limit if max_depth is None else max_depth
    max_keys = no_limit if max_keys is None else max_keys
    max_str = no_limit if max_str is None else max_str
    max_values = no_limit if max_values is None else max_values

    def report_json(value, prefix, name, seg, out):
        if type_name == _VALUE:
            kind = value.WhichOneof("kind")
            if kind == "struct_value":
                root, is_struct = value.struct_value, True
            elif kind == "list_value":
                root, is_struct = value.list_value, False
            else:
                if kind == "string_value" and len(value.string_value) > max_str:
                    _add(
                        out,
                        _path(prefix, name, seg),
                        f"must be at most {max_str} characters long (got {len(value.string_value)})",
                    )
                return
        else:
            root, is_struct = value, type_name == _STRUCT
        _walk_json(root, is_struct, prefix, name, seg, max_depth, max_keys, max_str, out, max_values)

    return report_json


def _walk_json(
    root, root_is_struct: bool, prefix, name, seg, max_depth, max_keys, max_str, out: list, max_values=float("inf")
) -> None:
    """Walk a Struct or ListValue breadth first, with a queue rather than recursion.

    A queue item is (container, is_struct, location, depth); a location is None (the field
    itself) or (parent location, key or index), rendered only when a violation is reported.
    Containers deeper than max_depth are reported once and not looked into; the walk
    stops once more than max_values values were seen, so its cost is bounded.
    """
    queue: deque[tuple[Any, bool, Any, int]] = deque(((root, root_is_struct, None, 1),))
    pop, push = queue.popleft, queue.append
    seen = 0
    while queue:
        node, is_struct, where, depth = pop()
        seen += len(node.fields) if is_struct else len(node.values)
        if seen > max_values:
            _add(out, _path(prefix, name, seg), f"must hold at most {max_values} values in all")
            return
        if depth > max_depth:
            at = _location(where).lstrip(".") or "the top"
            description = f"must be nested at most {max_depth} levels deep (level {depth} reached at {at})"
            _add(out, _path(prefix, name, seg), description)
            return  # once per field: breadth first, everything still queued is at least this deep
        if is_struct:
            fields = node.fields
            if len(fields) > max_keys:
                description = f"must have at most {max_keys} keys (got {len(fields)})"
                _add(out, _path(prefix, name, seg) + _location(where), description)
            for key in fields:
                value = fields[key]
                if len(key) > max_str:
                    _json_string(prefix, name, seg, (where, key), "key ", max_str, len(key), out)
                kind = value.WhichOneof("kind")
                if kind == "struct_value":
                    push((value.struct_value, True, (where, key), depth + 1))
                elif kind == "list_value":
                    push((value.list_value, False, (where, key), depth + 1))
                elif kind == "string_value" and len(value.string_value) > max_str:
                    _json_string(prefix, name, seg, (where, key), "", max_str, len(value.string_value), out)
        else:
            for index, value in enumerate(node.values):
                kind = value.WhichOneof("kind")
                if kind == "struct_value":
                    push((value.struct_value, True, (where, index), depth + 1))
                elif kind == "list_value":
                    push((value.list_value, False, (where, index), depth + 1))
                elif kind == "string_value" and len(value.string_value) > max_str:
                    _json_string(prefix, name, seg, (where, index), "", max_str, len(value.string_value), out)


def _json_string(prefix, name, seg, where, what: str, max_str, length: int, out: list) -> None:
    description = f"{what}must be at most {max_str} characters long (got {length})"
    _add(out, _path(prefix, name, seg) + _location(where), description)


# ------------------------------------------------------------------ rendering


def _path(prefix: str, name: str, seg) -> str:
    if seg is None:
        return prefix + name
    return prefix + name + _index(seg)


def _index(seg) -> str:
    if isinstance(seg, str):
        return "[" + json.dumps(_short(seg), ensure_ascii=False) + "]"
    return f"[{seg}]"


def _location(where) -> str:
    """Render a location inside a Struct/ListValue: ``.a.b[3]["x.y"]``."""
    parts = []
    while where is not None:
        where, seg = where
        if isinstance(seg, str) and len(seg) <= _PATH_KEY_MAX and _PLAIN_KEY.fullmatch(seg):
            parts.append("." + seg)
        else:
            parts.append(_index(seg))
    return "".join(reversed(parts))


def _short(key: str) -> str:
    return key if len(key) <= _PATH_KEY_MAX else key[:_PATH_KEY_MAX] + "…"


def _number(value) -> str:
    if value.__class__ is float and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _seconds(nanos: int) -> str:
    sign = "-" if nanos < 0 else ""
    whole, fraction = divmod(abs(nanos), _NANOS)
    if fraction:
        return f"{sign}{whole}.{fraction:09d}".rstrip("0") + "s"
    return f"{sign}{whole}s"
