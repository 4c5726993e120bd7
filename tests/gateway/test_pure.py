"""Pure logic of the gateway: rules, transcoding, headers, the status table, OpenAPI."""

from __future__ import annotations

import doctest

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2
from openapi_spec_validator import validate as validate_openapi

from gateway import errors, metadata, openapi, rules, streaming, transcode
from protos.runner.v1 import runner_pb2 as pb

RULES = rules.load([pb.DESCRIPTOR])
BY_METHOD = {rule.method: rule for rule in RULES}


@pytest.mark.parametrize("module", [rules, transcode, metadata, streaming])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_every_annotated_method_of_the_schema_has_a_rule():
    annotated = {
        (service.full_name, method.name)
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }
    assert annotated == {(rule.service, rule.method) for rule in RULES}
    assert len(annotated) == 11  # GetResilience (GET /v1/resilience) is the latest
    assert BY_METHOD["WatchRun"].server_streaming and BY_METHOD["ExecuteRun"].server_streaming
    assert not BY_METHOD["GetRun"].server_streaming
    assert BY_METHOD["SubmitRun"].input_type is pb.SubmitRunRequest and BY_METHOD["SubmitRun"].output_type is pb.Run


@pytest.mark.parametrize(
    "template, path, expected",
    [
        ("/v1/runs/{run_id}", "/v1/runs/abc", {"run_id": "abc"}),
        ("/v1/runs/{run_id}", "/v1/runs/a/b", None),
        ("/v1/runs/{run_id}", "/v1/runs/", None),
        ("/v1/runs/{run_id}:cancel", "/v1/runs/r1:cancel", {"run_id": "r1"}),
        ("/v1/runs:execute", "/v1/runs:execute", {}),
        ("/v1/runs:execute", "/v1/runsXexecute", None),  # literals are escaped
        ("/v1/{name=projects/*/runs/*}", "/v1/projects/p/runs/r", {"name": "projects/p/runs/r"}),
        ("/v1/{name=files/**}:get", "/v1/files/a/b/c:get", {"name": "files/a/b/c"}),
        ("/v1/{spec.scenario}/x", "/v1/s1/x", {"spec.scenario": "s1"}),
    ],
)
def test_path_templates(template, path, expected):
    regex, variables = rules.compile_template(template)
    found = regex.fullmatch(path)
    assert (dict(zip(variables, found.groups())) if found else None) == expected


@pytest.mark.parametrize("bad", ["v1/runs", "/v1/{a", "/v1/{a}/{a}", "/v1/{a=x*}"])
def test_bad_templates_are_refused(bad):
    with pytest.raises(rules.TemplateError):
        rules.compile_template(bad)


def test_query_parameters_nested_enums_and_names():
    message = transcode.build_request(
        BY_METHOD["ListRuns"], {}, [("page_size", "7"), ("state", "CANCELLED"), ("pageToken", "t")], b""
    )
    assert (message.page_size, message.state, message.page_token) == (7, pb.CANCELLED, "t")
    assert transcode.build_request(BY_METHOD["ListRuns"], {}, [("state", "5")], b"").state == pb.CANCELLED


def test_body_star_and_path_variables_win_over_the_body():
    body = b'{"spec": {"diagnostic": {"ticks": 2, "tickDuration": "0.5s", "mode": "CPU"}}, "labels": {"a": "b"}}'
    message = transcode.build_request(BY_METHOD["SubmitRun"], {}, [], body)
    assert message.spec.diagnostic.ticks == 2 and message.spec.diagnostic.mode == pb.DiagnosticSpec.CPU
    assert message.spec.diagnostic.tick_duration.ToNanoseconds() == 500_000_000 and message.labels["a"] == "b"
    cancel = transcode.build_request(BY_METHOD["CancelRun"], {"run_id": "p"}, [], b'{"runId": "b", "reason": "r"}')
    assert (cancel.run_id, cancel.reason) == ("p", "r")
    assert transcode.build_request(BY_METHOD["CancelRun"], {"run_id": "p"}, [], b"").run_id == "p"


def test_last_event_id_sets_the_resume_point():
    message = transcode.build_request(BY_METHOD["WatchRun"], {"run_id": "r"}, [], b"", last_event_id="12")
    assert message.after_seq == 12


@pytest.mark.parametrize(
    "method, query, body, field",
    [
        ("ListRuns", [("nope", "1")], b"", "nope"),
        ("ListRuns", [("page_size", "x")], b"", "page_size"),
        ("ListRuns", [("page_size", "1"), ("page_size", "2")], b"", "page_size"),
        ("ListRuns", [("state", "NOT_A_STATE")], b"", "state"),
        ("SubmitRun", [], b'{"spec": {"diagnostic": {"tickz": 1}}}', "spec.diagnostic.tickz"),
        ("SubmitRun", [], b'{"unknown": 1}', "unknown"),
        ("SubmitRun", [], b"[1, 2]", ""),
        ("SubmitRun", [], b"{not json", ""),
        ("SubmitRun", [], b"[" * 100_000, ""),
        ("SubmitRun", [], b'{"labels": [1]}', "labels"),
    ],
)
def test_requests_that_do_not_fit_are_transcode_errors(method, query, body, field):
    with pytest.raises(transcode.TranscodeError) as caught:
        transcode.build_request(BY_METHOD[method], {}, query, body)
    assert caught.value.violations[0].field == field


def test_responses_are_proto3_json_with_camel_case_names_and_defaults():
    out = transcode.response_json(BY_METHOD["GetRun"], pb.Run(run_id="r", state=pb.RUNNING))
    assert out["runId"] == "r" and out["state"] == "RUNNING" and out["cancelRequested"] is False


@pytest.mark.parametrize(
    "value, seconds", [("5S", 5.0), ("100m", 0.1), ("2M", 120.0), ("1H", 3600.0), ("250u", 250e-6), ("7n", 7e-9)]
)
def test_grpc_timeout(value, seconds):
    assert metadata.parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "5s", "123456789S", "-1S", "1.5S"])
def test_bad_grpc_timeout(value):
    with pytest.raises(metadata.HeaderError):
        metadata.parse_grpc_timeout(value)


def test_headers_to_metadata():
    md = metadata.to_metadata(
        [
            ("authorization", "Bearer x"),
            ("traceparent", "00-abc-def-01"),
            ("grpc-metadata-tenant", "t1"),
            ("grpc-metadata-blob-bin", "AAE="),
            ("cookie", "secret"),
        ],
        "rid",
    )
    assert md == (
        ("authorization", "Bearer x"),
        ("traceparent", "00-abc-def-01"),
        ("tenant", "t1"),
        ("blob-bin", b"\x00\x01"),
        ("x-request-id", "rid"),
    )
    for bad in [("grpc-metadata-grpc-status", "1"), ("grpc-metadata-x-bin", "***"), ("authorization", "é")]:
        with pytest.raises(metadata.HeaderError):
            metadata.to_metadata([bad], "rid")
    assert metadata.to_headers([("a", "1"), ("b-bin", b"\x00")], [("grpc-status", "0"), ("c", "2")]) == {
        "grpc-metadata-a": "1",
        "grpc-metadata-b-bin": "AA==",
        "grpc-metadata-c": "2",
    }


def test_status_table_is_grpc_gateways():
    expected = {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
        "UNAUTHENTICATED": 401,
    }
    assert {code.name: errors.http_status_of(code.value[0]) for code in grpc.StatusCode} == expected
    assert errors.http_status_of(99) == 500


def test_retry_after_rounds_up():
    def with_delay(seconds, nanos):
        return errors.status(
            code_pb2.RESOURCE_EXHAUSTED,
            "full",
            error_details_pb2.ErrorInfo(reason="QUEUE_FULL"),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)),
        )

    assert errors.retry_after_s(with_delay(1, 0)) == 1
    assert errors.retry_after_s(with_delay(1, 1)) == 2
    assert errors.retry_after_s(with_delay(0, 500_000_000)) == 1
    assert errors.retry_after_s(errors.status(code_pb2.NOT_FOUND, "x")) is None
    body = errors.status_json(with_delay(2, 0))
    assert body["code"] == 8 and [d["@type"].rsplit(".", 1)[-1] for d in body["details"]] == ["ErrorInfo", "RetryInfo"]


def test_openapi_document_is_valid_and_carries_the_limits():
    document = openapi.document(RULES)
    validate_openapi(document)
    schemas = document["components"]["schemas"]
    diagnostic = schemas["runner.v1.DiagnosticSpec"]["properties"]
    assert diagnostic["ticks"]["minimum"] == 0 and diagnostic["ticks"]["maximum"] == 1_000_000
    simulation = schemas["runner.v1.SimulationSpec"]
    assert simulation["properties"]["scenario"]["maxLength"] == 256 and "scenario" in simulation["required"]
    assert schemas["runner.v1.SubmitRunRequest"]["properties"]["labels"]["maxProperties"] == 32
    assert schemas["runner.v1.SweepSpec"]["properties"]["values"]["maxItems"] == 50
    assert len(schemas["runner.v1.RunSpec"]["oneOf"]) == 6
    list_runs = document["paths"]["/v1/runs"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in list_runs}["page_size"] == 500
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert {f"{rule.service.rsplit('.', 1)[1]}_{rule.method}" for rule in RULES} <= operations


def test_the_limits_on_clients_are_settings():
    from gateway import settings as gateway_settings

    defaults = gateway_settings.Settings()
    assert (defaults.max_header_bytes, defaults.max_header_count, defaults.max_connections) == (65536, 100, 1000)
    assert (defaults.head_timeout_s, defaults.body_timeout_s, defaults.max_grpc_timeout_s) == (10.0, 30.0, 300.0)
    assert defaults.max_metadata_bytes == 6144
    env = {
        "GATEWAY_MAX_HEADER_BYTES": "8192",
        "GATEWAY_MAX_HEADER_COUNT": "20",
        "GATEWAY_HEAD_TIMEOUT_S": "2.5",
        "GATEWAY_BODY_TIMEOUT_S": "4",
        "GATEWAY_MAX_CONNECTIONS": "50",
        "GATEWAY_MAX_GRPC_TIMEOUT_S": "60",
        "GATEWAY_MAX_METADATA_BYTES": "4096",
    }
    read = gateway_settings.from_env(env)
    assert (read.max_header_bytes, read.max_header_count) == (8192, 20)
    assert (read.head_timeout_s, read.body_timeout_s) == (2.5, 4.0)
    assert (read.max_connections, read.max_grpc_timeout_s, read.max_metadata_bytes) == (50, 60.0, 4096)
    for name in env:
        with pytest.raises(ValueError, match=name.removeprefix("GATEWAY_").lower()):
            gateway_settings.from_env({name: "0"})
