"""HTTP rules read from the schema's ``google.api.http`` annotations (pure).

The annotations are the gateway's only route table: :func:`load` walks the services of the
generated file descriptors and returns one :class:`HttpRule` per binding (the main one and each
``additional_bindings``), so adding an annotated RPC to the schema adds its REST route with no
gateway code.

Path templates follow ``google/api/http.proto``: literal segments, ``{field.path}`` (one
segment), ``{field.path=pattern}`` with ``*`` (one segment) and ``**`` (any number of segments),
and an optional trailing ``:verb``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.message import Message

_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")


class TemplateError(ValueError):
    """A path template this module cannot compile (a mistake in the schema)."""


@dataclasses.dataclass(frozen=True)
class HttpRule:
    """One REST binding of one RPC."""

    verb: str  # upper case: "GET", "POST", ...
    template: str  # as written in the schema: "/v1/runs/{run_id}:cancel"
    regex: re.Pattern  # matches the whole request path; group i holds variables[i]
    variables: tuple[str, ...]  # field paths bound by the path, in order: ("run_id",)
    body: str  # "*" (the whole message), a field name, or "" (no body)
    response_body: str  # "" (the whole response) or a field name
    service: str  # "runner.v1.RunnerService"
    method: str  # "SubmitRun"
    input_type: type[Message]  # the request message class
    output_type: type[Message]  # the response message class
    server_streaming: bool

    @property
    def grpc_path(self) -> str:
        """The gRPC method path: ``/runner.v1.RunnerService/SubmitRun``."""
        return f"/{self.service}/{self.method}"

    def match(self, path: str) -> dict[str, str] | None:
        """The path variables when ``path`` matches the template, else None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return dict(zip(self.variables, found.groups()))


def compile_template(template: str) -> tuple[re.Pattern, tuple[str, ...]]:
    """Compile a ``google.api.http`` path template into a regex and its variables.

    Variables may be dotted field paths, so the regex uses positional groups, in the
    order of the returned variable names.

    >>> regex, names = compile_template("/v1/runs/{run_id}:cancel")
    >>> names
    ('run_id',)
    >>> regex.fullmatch("/v1/runs/r-42:cancel").groups()
    ('r-42',)
    >>> regex.fullmatch("/v1/runs/a/b:cancel") is None
    True
    >>> compile_template("/v1/{name=projects/*/files/**}")[0].fullmatch("/v1/projects/p/files/a/b").groups()
    ('projects/p/files/a/b',)
    """
    if not template.startswith("/"):
        raise TemplateError(f"path template must start with '/': {template!r}")
    out: list[str] = []
    names: list[str] = []
    pos = 0
    for found in _VARIABLE.finditer(template):
        out.append(_literal(template[pos : found.start()], template))
        name, pattern = found.group(1), found.group(2)
        if name in names:
            raise TemplateError(f"variable {name!r} bound twice in {template!r}")
        names.append(name)
        out.append("(" + _segments(pattern or "*", template) + ")")
        pos = found.end()
    out.append(_literal(template[pos:], template))
    return re.compile("".join(out)), tuple(names)


def _literal(text: str, template: str) -> str:
    if "{" in text or "}" in text:
        raise TemplateError(f"unbalanced braces in {template!r}")
    return re.escape(text)


def _segments(pattern: str, template: str) -> str:
    parts = []
    for segment in pattern.split("/"):
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        elif segment and "*" not in segment:
            parts.append(re.escape(segment))
        else:
            raise TemplateError(f"bad segment {segment!r} in {template!r}")
    return "/".join(parts)


def load(files: Iterable[FileDescriptor]) -> list[HttpRule]:
    """Every HTTP rule of every service method of ``files`` that has a ``google.api.http``
    option, in schema order (main binding, then its additional bindings).

    Raises TemplateError for a template that does not compile.
    """
    rules: list[HttpRule] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                http = options.Extensions[annotations_pb2.http]
                for binding in (http, *http.additional_bindings):
                    rules.append(_rule(method, binding))
    return rules


def _rule(method: MethodDescriptor, binding: http_pb2.HttpRule) -> HttpRule:
    kind = binding.WhichOneof("pattern")
    if kind in _VERBS:
        verb, template = kind.upper(), getattr(binding, kind)
    elif kind == "custom":
        verb, template = binding.custom.kind.upper(), binding.custom.path
    else:
        raise TemplateError(f"{method.full_name}: http rule without a pattern")
    regex, variables = compile_template(template)
    return HttpRule(
        verb=verb,
        template=template,
        regex=regex,
        variables=variables,
        body=binding.body,
        response_body=binding.response_body,
        service=method.containing_service.full_name,
        method=method.name,
        input_type=message_factory.GetMessageClass(method.input_type),
        output_type=message_factory.GetMessageClass(method.output_type),
        server_streaming=method.server_streaming,
    )
