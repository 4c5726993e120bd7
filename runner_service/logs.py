"""Structured logging, configured once at start-up (never at import).

``configure()`` attaches one handler to the root logger. Every line it writes goes through
``RedactingFilter`` first: credentials never reach the output, whichever logger (ours or a
library's) wrote them. Levels: the project's own loggers log at the configured level; other
libraries' loggers (grpc, asyncio, SQLAlchemy, ...) at WARNING or above, so a DEBUG level
shows our code's detail without the libraries' chatter.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
import urllib.parse
from collections.abc import Iterable
from typing import IO, Any

# Record attributes that are not ``extra`` fields (uvicorn's ``color_message`` is its message
# with terminal colours).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}

#: Loggers of this project: they log at the configured level.
PROJECT_LOGGERS = ("runner_service", "gateway", "protos")
#: Libraries' loggers whose INFO lines are the server's own life: the HTTP server's start,
#: stop and access log. Never below INFO.
_INFO_FLOOR_LOGGERS = ("uvicorn.error", "uvicorn.access")
#: Libraries' loggers that set their own level (uvicorn does): pinned back to the floor.
_PINNED_LOGGERS = ("uvicorn.asgi",)
#: Everything else (the root logger) logs at WARNING or above.
THIRD_PARTY_FLOOR = logging.WARNING

REDACTED = "***"

# user:password@ in a URL ("postgresql://u:pw@host/db"): the password goes.
_URL_PASSWORD = r"(?P<url>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#]*:)[^\s@/?#]+(?=@)"
# password=..., db_passwd='...', pwd: ..., token=..., "secret": "..." in a query string,
# key=value text, a repr or JSON.
_KEY_VALUE = (
    r"(?P<kv>(?<![\w.\-])(?i:[\w.\-]*(?:password|passwd|pwd|token|secret|api_?key))['\"]?\s*[=:]\s*)"
    r"(?:'[^']*'|\"[^\"]*\"|[^\s&;,'\")\]}<>]+)"
)
# Authorization: Bearer <credentials> (any scheme, or none) in a header, gRPC metadata or a
# repr of either; and a bearer credential anywhere.
_AUTHORIZATION = (
    r"(?P<auth>(?i:authorization)['\"]?\s*[:=,]\s*['\"]?(?:(?i:bearer|basic|digest|token)\s+)?)"
    r"(?!(?i:bearer|basic|digest|token)\s)[^\s'\",;)\]}<>]+"
)
_BEARER = r"(?P<bearer>(?i:\bbearer)\s+)[A-Za-z0-9._~+/\-]+=*"
_PATTERN = re.compile("|".join((_URL_PASSWORD, _KEY_VALUE, _AUTHORIZATION, _BEARER)))
# Cheap test before the regular expression: a match needs one of these (in lower case).
_HINTS = ("://", "pass", "pwd", "token", "secret", "key", "auth", "bearer")
_SECRET_NAME = re.compile(r"(?i)password|passwd|pwd|token|secret|api_?key|authorization|credential")
_MIN_SECRET_LENGTH = 4


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("url") or match.group("kv") or match.group("auth") or match.group("bearer")
    return prefix + REDACTED


class Redactor:
    """Removes credentials from text: URL passwords, ``password=``-like parameters, bearer
    credentials, and the literal secrets it was given (e.g. the configured admin token)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literal = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._literal = re.compile("|".join(map(re.escape, literal))) if literal else None

    def text(self, value: str) -> str:
        if self._literal is not None:
            value = self._literal.sub(REDACTED, value)
        lower = value.lower()
        if any(hint in lower for hint in _HINTS):
            value = _PATTERN.sub(_replace, value)
        return value

    def value(self, value: Any) -> Any:
        """A structured value (an ``extra`` field) with its credentials removed."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.field(k, v) if isinstance(k, str) else self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        text = str(value)
        clean = self.text(text)
        return value if clean == text else clean

    def field(self, name: str, value: Any) -> Any:
        """A named value: a non-empty string under a credential's name (``password``,
        ``token``, ``authorization``, ...) goes entirely."""
        if isinstance(value, str | bytes) and value and _SECRET_NAME.search(name):
            return REDACTED
        return self.value(value)


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message (with its args), its ``extra`` fields, its
    exception and stack text leave with their credentials redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redactor = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # noqa: BLE001 - a malformed record is the formatter's to report
            pass
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        redactor = self.redactor
        # The message is formatted once here; the formatter then reuses it as is.
        message = record.getMessage()
        record.msg = redactor.text(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            record.__dict__[key] = redactor.field(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.text(record.stack_info)


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries (its password, ``password=``-like query parameters), to
    hand to ``configure(secrets=...)`` so they are removed wherever they appear."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = [parts.password or "", urllib.parse.unquote(parts.password or "")]
        found += [v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET_NAME.search(k)]
    except ValueError:
        return []
    return sorted({s for s in found if s})


# ------------------------------------------------------------ the call being served

# (traceparent, x-request-id) of the call this context serves; each call (an RPC, an HTTP
# request) runs in a context of its own, so nothing leaks from one call to the next.
_CALL: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar("log_call", default=None)
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?:-.*)?")
_MAX_REQUEST_ID = 128


def bind_call(traceparent: str | None, request_id: str | None) -> None:
    """Log lines written from now on in this context (the call being served, and the tasks it
    starts) carry the call's trace context: ``trace_id`` and ``span_id`` from a W3C
    ``traceparent``, and ``x_request_id``. Cheap: parsed only when a line is written."""
    _CALL.set((traceparent, request_id))


def call_fields() -> dict[str, str]:
    """The trace context bound by bind_call() in this context, as log fields (a malformed
    ``traceparent`` gives none; an overlong ``x-request-id`` is cut)."""
    call = _CALL.get()
    if call is None:
        return {}
    traceparent, request_id = call
    fields: dict[str, str] = {}
    if traceparent:
        found = _TRACEPARENT.fullmatch(traceparent.strip().lower())
        if found is not None and found.group(1) != "0" * 32:
            fields["trace_id"], fields["span_id"] = found.group(1), found.group(2)
    if request_id:
        fields["x_request_id"] = request_id[:_MAX_REQUEST_ID]
    return fields


class CallContextFilter(logging.Filter):
    """A handler filter: a line written while a call is served carries its trace context
    (see bind_call), unless the line sets those fields itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _CALL.get() is not None:
            for key, value in call_fields().items():
                record.__dict__.setdefault(key, value)
        return True


# uvicorn's access line: '%s - "%s %s HTTP/%s" %d' % (client, method, path, http version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class AccessFieldsFilter(logging.Filter):
    """A handler filter for JSON lines: uvicorn's access line also carries its parts as fields
    (client, method, path, http_version, status), as every other line carries its extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            for key, value in zip(_ACCESS_FIELDS, record.args):
                record.__dict__.setdefault(key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v!r}" for k, v in _extras(record).items())
        if not extras:
            return line
        # Extras belong to the message line, before any traceback.
        first, newline, rest = line.partition("\n")
        return f"{first} {extras}{newline}{rest}"


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure(
    level: str | int = "INFO",
    json_lines: bool = True,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log line to ``stream`` (stderr by default) as JSON lines or text, with
    credentials redacted (``secrets`` adds literal strings to remove, e.g. the admin token).
    ``level`` applies to the project's loggers; other libraries log at WARNING or above.
    Replaces any handler on the root logger; warnings go through logging too. Returns the
    handler."""
    numeric = _level(level)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CallContextFilter())
    if json_lines:
        handler.addFilter(AccessFieldsFilter())  # before redaction, which formats the message
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(max(numeric, THIRD_PARTY_FLOOR))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(numeric)
    for name in _INFO_FLOOR_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    for name in _PINNED_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, THIRD_PARTY_FLOOR))
    logging.captureWarnings(True)
    return handler
