import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from protos.runner.v1 import limits_pb2 as _limits_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    QUEUED: _ClassVar[RunState]
    RUNNING: _ClassVar[RunState]
    SUCCEEDED: _ClassVar[RunState]
    FAILED: _ClassVar[RunState]
    CANCELLED: _ClassVar[RunState]
    DEADLINE_EXCEEDED: _ClassVar[RunState]
    INTERRUPTED: _ClassVar[RunState]

class CacheStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STATUS_UNSPECIFIED: _ClassVar[CacheStatus]
    CACHE_HIT: _ClassVar[CacheStatus]
    CACHE_STALE: _ClassVar[CacheStatus]
    CACHE_MISS: _ClassVar[CacheStatus]

class PolicyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_STATE_UNSPECIFIED: _ClassVar[PolicyState]
    ALLOWED: _ClassVar[PolicyState]
    COOLING_DOWN: _ClassVar[PolicyState]
    BLOCKED: _ClassVar[PolicyState]

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_OPEN: _ClassVar[CircuitState]
    CIRCUIT_HALF_OPEN: _ClassVar[CircuitState]
RUN_STATE_UNSPECIFIED: RunState
QUEUED: RunState
RUNNING: RunState
SUCCEEDED: RunState
FAILED: RunState
CANCELLED: RunState
DEADLINE_EXCEEDED: RunState
INTERRUPTED: RunState
CACHE_STATUS_UNSPECIFIED: CacheStatus
CACHE_HIT: CacheStatus
CACHE_STALE: CacheStatus
CACHE_MISS: CacheStatus
POLICY_STATE_UNSPECIFIED: PolicyState
ALLOWED: PolicyState
COOLING_DOWN: PolicyState
BLOCKED: PolicyState
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_CLOSED: CircuitState
CIRCUIT_OPEN: CircuitState
CIRCUIT_HALF_OPEN: CircuitState

class SimulationSpec(_message.Message):
    __slots__ = ("scenario", "max_ticks", "seed", "config_overrides")
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    MAX_TICKS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    max_ticks: int
    seed: int
    config_overrides: _struct_pb2.Struct
    def __init__(self, scenario: _Optional[str] = ..., max_ticks: _Optional[int] = ..., seed: _Optional[int] = ..., config_overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class BatchSpec(_message.Message):
    __slots__ = ("simulation", "num_iterations")
    SIMULATION_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    simulation: SimulationSpec
    num_iterations: int
    def __init__(self, simulation: _Optional[_Union[SimulationSpec, _Mapping]] = ..., num_iterations: _Optional[int] = ...) -> None: ...

class CompareSpec(_message.Message):
    __slots__ = ("baseline", "variant", "num_iterations")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    baseline: SimulationSpec
    variant: SimulationSpec
    num_iterations: int
    def __init__(self, baseline: _Optional[_Union[SimulationSpec, _Mapping]] = ..., variant: _Optional[_Union[SimulationSpec, _Mapping]] = ..., num_iterations: _Optional[int] = ...) -> None: ...

class SweepSpec(_message.Message):
    __slots__ = ("simulation", "parameter", "values", "num_iterations")
    SIMULATION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    simulation: SimulationSpec
    parameter: str
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    num_iterations: int
    def __init__(self, simulation: _Optional[_Union[SimulationSpec, _Mapping]] = ..., parameter: _Optional[str] = ..., values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ..., num_iterations: _Optional[int] = ...) -> None: ...

class DiagnosticSpec(_message.Message):
    __slots__ = ("ticks", "tick_duration", "mode", "ignore_cancellation", "fail_at_tick", "log_every", "progress_every")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[DiagnosticSpec.Mode]
        SLEEP: _ClassVar[DiagnosticSpec.Mode]
        CPU: _ClassVar[DiagnosticSpec.Mode]
    MODE_UNSPECIFIED: DiagnosticSpec.Mode
    SLEEP: DiagnosticSpec.Mode
    CPU: DiagnosticSpec.Mode
    TICKS_FIELD_NUMBER: _ClassVar[int]
    TICK_DURATION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CANCELLATION_FIELD_NUMBER: _ClassVar[int]
    FAIL_AT_TICK_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_EVERY_FIELD_NUMBER: _ClassVar[int]
    ticks: int
    tick_duration: _duration_pb2.Duration
    mode: DiagnosticSpec.Mode
    ignore_cancellation: bool
    fail_at_tick: int
    log_every: int
    progress_every: int
    def __init__(self, ticks: _Optional[int] = ..., tick_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., mode: _Optional[_Union[DiagnosticSpec.Mode, str]] = ..., ignore_cancellation: _Optional[bool] = ..., fail_at_tick: _Optional[int] = ..., log_every: _Optional[int] = ..., progress_every: _Optional[int] = ...) -> None: ...

class PluginSpec(_message.Message):
    __slots__ = ("kind", "parameters")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    parameters: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("simulation", "batch", "compare", "sweep", "diagnostic", "plugin")
    SIMULATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    simulation: SimulationSpec
    batch: BatchSpec
    compare: CompareSpec
    sweep: SweepSpec
    diagnostic: DiagnosticSpec
    plugin: PluginSpec
    def __init__(self, simulation: _Optional[_Union[SimulationSpec, _Mapping]] = ..., batch: _Optional[_Union[BatchSpec, _Mapping]] = ..., compare: _Optional[_Union[CompareSpec, _Mapping]] = ..., sweep: _Optional[_Union[SweepSpec, _Mapping]] = ..., diagnostic: _Optional[_Union[DiagnosticSpec, _Mapping]] = ..., plugin: _Optional[_Union[PluginSpec, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("done", "total", "fraction", "message")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    fraction: float
    message: str
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "spec", "state", "progress", "create_time", "start_time", "end_time", "update_time", "result", "error", "attempt", "cancel_requested", "request_id", "labels", "replica", "timeout", "kind", "max_attempts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: RunSpec
    state: RunState
    progress: Progress
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    result: _struct_pb2.Struct
    error: _status_pb2.Status
    attempt: int
    cancel_requested: bool
    request_id: str
    labels: _containers.ScalarMap[str, str]
    replica: str
    timeout: _duration_pb2.Duration
    kind: str
    max_attempts: int
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempt: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., replica: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., kind: _Optional[str] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "previous", "reason", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    previous: RunState
    reason: str
    error: _status_pb2.Status
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., previous: _Optional[_Union[RunState, str]] = ..., reason: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "seq", "time", "state_change", "progress", "log", "result")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    state_change: StateChange
    progress: Progress
    log: LogLine
    result: _struct_pb2.Struct
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SubmitRunRequest(_message.Message):
    __slots__ = ("spec", "request_id", "timeout", "labels", "max_attempts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    request_id: str
    timeout: _duration_pb2.Duration
    labels: _containers.ScalarMap[str, str]
    max_attempts: int
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ..., request_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "kind")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: RunState
    kind: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., kind: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListScenariosRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnitSummary(_message.Message):
    __slots__ = ("unit_type", "count")
    UNIT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    unit_type: str
    count: int
    def __init__(self, unit_type: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class SideSummary(_message.Message):
    __slots__ = ("name", "units")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    units: _containers.RepeatedCompositeFieldContainer[UnitSummary]
    def __init__(self, name: _Optional[str] = ..., units: _Optional[_Iterable[_Union[UnitSummary, _Mapping]]] = ...) -> None: ...

class Scenario(_message.Message):
    __slots__ = ("name", "description", "sides", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIDES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    sides: _containers.RepeatedCompositeFieldContainer[SideSummary]
    error: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., sides: _Optional[_Iterable[_Union[SideSummary, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ListScenariosResponse(_message.Message):
    __slots__ = ("scenarios",)
    SCENARIOS_FIELD_NUMBER: _ClassVar[int]
    scenarios: _containers.RepeatedCompositeFieldContainer[Scenario]
    def __init__(self, scenarios: _Optional[_Iterable[_Union[Scenario, _Mapping]]] = ...) -> None: ...

class GetSummaryRequest(_message.Message):
    __slots__ = ("recent_limit",)
    RECENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    recent_limit: int
    def __init__(self, recent_limit: _Optional[int] = ...) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    count: int
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("run_id", "kind", "progress", "update_time", "replica")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    kind: str
    progress: Progress
    update_time: _timestamp_pb2.Timestamp
    replica: str
    def __init__(self, run_id: _Optional[str] = ..., kind: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replica: _Optional[str] = ...) -> None: ...

class SummarySection(_message.Message):
    __slots__ = ("name", "cache", "revision", "built_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BUILT_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    cache: CacheStatus
    revision: int
    built_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., cache: _Optional[_Union[CacheStatus, str]] = ..., revision: _Optional[int] = ..., built_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("counts", "recent_runs", "generated_time", "cache", "recent_progress", "sections")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_RUNS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TIME_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    RECENT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[StateCount]
    recent_runs: _containers.RepeatedCompositeFieldContainer[Run]
    generated_time: _timestamp_pb2.Timestamp
    cache: CacheStatus
    recent_progress: _containers.RepeatedCompositeFieldContainer[RunProgress]
    sections: _containers.RepeatedCompositeFieldContainer[SummarySection]
    def __init__(self, counts: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., recent_runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., generated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cache: _Optional[_Union[CacheStatus, str]] = ..., recent_progress: _Optional[_Iterable[_Union[RunProgress, _Mapping]]] = ..., sections: _Optional[_Iterable[_Union[SummarySection, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerPoolStatus(_message.Message):
    __slots__ = ("size", "alive", "busy", "restarts_total")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    size: int
    alive: int
    busy: int
    restarts_total: int
    def __init__(self, size: _Optional[int] = ..., alive: _Optional[int] = ..., busy: _Optional[int] = ..., restarts_total: _Optional[int] = ...) -> None: ...

class WatchdogStatus(_message.Message):
    __slots__ = ("policy_state", "restarts_in_window", "window", "cooldown_remaining", "cooldown_threshold", "block_threshold", "recommended_action")
    POLICY_STATE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_REMAINING_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_ACTION_FIELD_NUMBER: _ClassVar[int]
    policy_state: PolicyState
    restarts_in_window: int
    window: _duration_pb2.Duration
    cooldown_remaining: _duration_pb2.Duration
    cooldown_threshold: int
    block_threshold: int
    recommended_action: str
    def __init__(self, policy_state: _Optional[_Union[PolicyState, str]] = ..., restarts_in_window: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cooldown_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cooldown_threshold: _Optional[int] = ..., block_threshold: _Optional[int] = ..., recommended_action: _Optional[str] = ...) -> None: ...

class AdminStatus(_message.Message):
    __slots__ = ("workers", "watchdog", "queued", "running", "resilience")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    WATCHDOG_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RESILIENCE_FIELD_NUMBER: _ClassVar[int]
    workers: WorkerPoolStatus
    watchdog: WatchdogStatus
    queued: int
    running: int
    resilience: Resilience
    def __init__(self, workers: _Optional[_Union[WorkerPoolStatus, _Mapping]] = ..., watchdog: _Optional[_Union[WatchdogStatus, _Mapping]] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., resilience: _Optional[_Union[Resilience, _Mapping]] = ...) -> None: ...

class GetResilienceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CircuitStatus(_message.Message):
    __slots__ = ("state", "consecutive_failures", "failure_threshold", "reset_timeout", "retry_after", "opened_total", "last_error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RESET_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    OPENED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    state: CircuitState
    consecutive_failures: int
    failure_threshold: int
    reset_timeout: _duration_pb2.Duration
    retry_after: _duration_pb2.Duration
    opened_total: int
    last_error: str
    def __init__(self, state: _Optional[_Union[CircuitState, str]] = ..., consecutive_failures: _Optional[int] = ..., failure_threshold: _Optional[int] = ..., reset_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., opened_total: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class DatabaseStatus(_message.Message):
    __slots__ = ("writes_failing", "held_writes", "last_write_error", "reads_in_flight", "slow_reads_waiting", "pool", "pool_size", "pool_max_overflow", "read_queue_max", "slow_query_concurrency", "query_timeout")
    WRITES_FAILING_FIELD_NUMBER: _ClassVar[int]
    HELD_WRITES_FIELD_NUMBER: _ClassVar[int]
    LAST_WRITE_ERROR_FIELD_NUMBER: _ClassVar[int]
    READS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SLOW_READS_WAITING_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOL_MAX_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_MAX_FIELD_NUMBER: _ClassVar[int]
    SLOW_QUERY_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    QUERY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    writes_failing: bool
    held_writes: int
    last_write_error: str
    reads_in_flight: int
    slow_reads_waiting: int
    pool: str
    pool_size: int
    pool_max_overflow: int
    read_queue_max: int
    slow_query_concurrency: int
    query_timeout: _duration_pb2.Duration
    def __init__(self, writes_failing: _Optional[bool] = ..., held_writes: _Optional[int] = ..., last_write_error: _Optional[str] = ..., reads_in_flight: _Optional[int] = ..., slow_reads_waiting: _Optional[int] = ..., pool: _Optional[str] = ..., pool_size: _Optional[int] = ..., pool_max_overflow: _Optional[int] = ..., read_queue_max: _Optional[int] = ..., slow_query_concurrency: _Optional[int] = ..., query_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Resilience(_message.Message):
    __slots__ = ("recommendation", "reasons", "circuit", "database", "watchdog", "queued", "running", "max_queued", "workers_alive", "workers_size", "draining", "observe_time")
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    WATCHDOG_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    recommendation: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    circuit: CircuitStatus
    database: DatabaseStatus
    watchdog: WatchdogStatus
    queued: int
    running: int
    max_queued: int
    workers_alive: int
    workers_size: int
    draining: bool
    observe_time: _timestamp_pb2.Timestamp
    def __init__(self, recommendation: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., circuit: _Optional[_Union[CircuitStatus, _Mapping]] = ..., database: _Optional[_Union[DatabaseStatus, _Mapping]] = ..., watchdog: _Optional[_Union[WatchdogStatus, _Mapping]] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., max_queued: _Optional[int] = ..., workers_alive: _Optional[int] = ..., workers_size: _Optional[int] = ..., draining: _Optional[bool] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RestartWorkersRequest(_message.Message):
    __slots__ = ("acknowledge_override", "reason")
    ACKNOWLEDGE_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    acknowledge_override: bool
    reason: str
    def __init__(self, acknowledge_override: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RestartWorkersResponse(_message.Message):
    __slots__ = ("status", "override_used")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_USED_FIELD_NUMBER: _ClassVar[int]
    status: AdminStatus
    override_used: bool
    def __init__(self, status: _Optional[_Union[AdminStatus, _Mapping]] = ..., override_used: _Optional[bool] = ...) -> None: ...
