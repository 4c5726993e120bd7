"""Conversions between protobuf messages and the runner's records (pure)."""

from __future__ import annotations

import base64
import json
import re

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import status_pb2

from protos.runner.v1 import runner_pb2 as pb
from runner_service.runs import RunState
from runner_service.schema import PROGRESS_KIND
from runner_service.store import Cursor, RunRecord, StoredEvent


def _proto_state(state: int) -> pb.RunState:
    return RunState(state).value


def run_to_proto(record: RunRecord) -> pb.Run:
    run = pb.Run(
        run_id=record.run_id,
        state=_proto_state(record.state),
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        cancel_requested=record.cancel_requested,
        request_id=record.request_id or "",
        labels=record.labels,
        replica=record.replica,
        kind=record.kind,
    )
    run.spec.ParseFromString(record.spec)
    progress = run.progress
    progress.done = record.progress_done
    progress.total = record.progress_total
    progress.message = record.progress_message
    if record.progress_total > 0:
        progress.fraction = min(1.0, record.progress_done / record.progress_total)
    elif record.state == RunState.SUCCEEDED:
        progress.fraction = 1.0
    run.create_time.FromMicroseconds(record.create_us)
    run.update_time.FromMicroseconds(record.update_us)
    if record.start_us is not None:
        run.start_time.FromMicroseconds(record.start_us)
    if record.end_us is not None:
        run.end_time.FromMicroseconds(record.end_us)
    if record.timeout_ms is not None:
        run.timeout.FromMilliseconds(record.timeout_ms)
    if record.result is not None:
        run.result.ParseFromString(record.result)
    if record.error is not None:
        run.error.ParseFromString(record.error)
    return run


def event_to_stored(event: pb.RunEvent) -> StoredEvent:
    return StoredEvent(
        run_id=event.run_id,
        seq=event.seq,
        time_us=event.time.ToMicroseconds(),
        kind=_EVENT_KINDS[event.WhichOneof("event")],
        payload=event.SerializeToString(),
    )


_EVENT_KINDS = {"state_change": "state", "progress": PROGRESS_KIND, "log": "log", "result": "result"}


def stored_to_event(stored: StoredEvent) -> pb.RunEvent:
    return pb.RunEvent.FromString(stored.payload)


def state_event(
    run_id: str,
    seq: int,
    time_us: int,
    state: RunState,
    previous: RunState | None,
    reason: str = "",
    error: status_pb2.Status | None = None,
) -> pb.RunEvent:
    event = pb.RunEvent(run_id=run_id, seq=seq)
    event.time.FromMicroseconds(time_us)
    change = event.state_change
    change.state = _proto_state(state)
    if previous is not None:
        change.previous = _proto_state(previous)
    change.reason = reason
    if error is not None:
        change.error.CopyFrom(error)
    return event


# ------------------------------------------------------------ job parameters


def _value(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Duration":
            return value.ToNanoseconds() / 1e9
        if full_name == "google.protobuf.Timestamp":
            return value.ToMicroseconds() / 1e6
        if full_name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
            return json_format.MessageToDict(value)
        return job_params(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    return value


def job_params(message) -> dict:
    """A job's parameters from its spec message: plain JSON-able values, with
    Durations as float seconds, enums as names, Structs as dicts. Fields left at
    their default are included with that default."""
    out: dict[str, object] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated and not message.HasField(field.name):
            continue
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
            else:
                out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def spec_params(spec: pb.RunSpec) -> dict:
    which = spec.WhichOneof("kind")
    member = getattr(spec, which)
    if which == "plugin":
        return json_format.MessageToDict(member.parameters)
    return job_params(member)


def result_struct(result) -> struct_pb2.Struct:
    """A job's return value as a Struct: a dict as it is, anything else as {"value": ...}.
    Raises ValueError/TypeError when it is not JSON-able."""
    struct = struct_pb2.Struct()
    if result is None:
        return struct
    if not isinstance(result, dict):
        result = {"value": result}
    struct.update(result)
    return struct


# ------------------------------------------------------------ page tokens


def encode_page_token(cursor: Cursor) -> str:
    raw = json.dumps([cursor.create_us, cursor.run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A run id in a token is what this service issues (hex today); the bound keeps
# whatever a client forges to a short plain string the database takes as it is.
_TOKEN_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# create_us is a signed 64-bit column: anything outside cannot name a run.
_MAX_CREATE_US = 2**63 - 1


def decode_page_token(token: str) -> Cursor:
    """The cursor a token returned by encode_page_token stands for.

    Raises ValueError, and nothing else, for any other string: malformed base64
    or JSON, another structure, a float, a bool, an integer outside 0..2^63-1,
    or a run id that is not a short plain string."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
    except Exception:  # noqa: BLE001 - any malformed token is the same client error
        decoded = None
    if isinstance(decoded, list) and len(decoded) == 2:
        create_us, run_id = decoded
        if (
            type(create_us) is int
            and 0 <= create_us <= _MAX_CREATE_US
            and type(run_id) is str
            and _TOKEN_RUN_ID.fullmatch(run_id)
        ):
            return Cursor(create_us, run_id)
    raise ValueError("page_token is not a token returned by ListRuns")


# ------------------------------------------------------------ idempotent submission


def canonical_spec(spec: pb.RunSpec) -> bytes:
    """The spec as it is stored and compared: unknown fields dropped (at every
    level), deterministic serialization (map entries, Struct keys included, in
    key order)."""
    copy = pb.RunSpec()
    copy.CopyFrom(spec)
    copy.DiscardUnknownFields()
    return copy.SerializeToString(deterministic=True)


def timeout_ms_of(request: pb.SubmitRunRequest) -> int | None:
    """The run's own timeout as it is stored."""
    return request.timeout.ToMilliseconds() if request.HasField("timeout") else None


def same_submission(record: RunRecord, request: pb.SubmitRunRequest) -> bool:
    """Whether a stored run is what `request` would create: the same spec (compared
    canonically, so the order of map entries and dropped unknown fields do not
    matter), the same labels and the same timeout."""
    return (
        dict(record.labels) == dict(request.labels)
        and record.timeout_ms == timeout_ms_of(request)
        and record.max_attempts == max(1, request.max_attempts)
        and canonical_spec(pb.RunSpec.FromString(record.spec)) == canonical_spec(request.spec)
    )
