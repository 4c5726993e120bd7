"""API docs: the schema's comments in the OpenAPI document, Swagger UI at /docs from the
installed package, and the operator pages' headers (their behaviour: tests/browser)."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate as validate_openapi

from gateway import openapi, rules
from protos.runner.v1 import runner_pb2

RULES = rules.load([runner_pb2.DESCRIPTOR])


def test_comments_json_holds_the_schemas_comments_by_full_name():
    comments = openapi.load_comments()
    assert comments["runner.v1.RunnerService.SubmitRun"].startswith("Accepts a run and returns it once it is durably")
    assert comments["runner.v1.DiagnosticSpec.Mode.SLEEP"] == "each tick sleeps tick_duration"  # trailing comment
    assert comments["runner.v1.SweepSpec.parameter"].startswith("Dotted path of the scenario parameter")
    assert "\n" not in comments["runner.v1.RunnerService.SubmitRun"]  # lines joined into one paragraph


def test_operations_take_summary_and_description_from_the_method_comments():
    document = openapi.document(RULES, comments=openapi.load_comments())
    validate_openapi(document)
    submit = document["paths"]["/v1/runs"]["post"]
    assert submit["summary"] == "Accepts a run and returns it once it is durably stored (state QUEUED)."
    assert "Idempotent by request_id" in submit["description"]
    assert "`runner.v1.RunnerService/SubmitRun`" in submit["description"]
    for path in document["paths"].values():
        for operation in path.values():
            assert not re.fullmatch(r"runner\.v1\.\w+\.\w+", operation["summary"]), operation["operationId"]
    tags = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    assert "Bearer" in tags["AdminService"]


def test_fields_carry_their_comment_and_their_limits_in_words():
    document = openapi.document(RULES, comments=openapi.load_comments())
    schemas = document["components"]["schemas"]
    max_ticks = schemas["runner.v1.SimulationSpec"]["properties"]["maxTicks"]
    assert (max_ticks["minimum"], max_ticks["maximum"]) == (1, 1000000)
    assert "from 1 to 1,000,000" in max_ticks["description"]
    scenario = schemas["runner.v1.SimulationSpec"]["properties"]["scenario"]
    assert "required" in scenario["description"] and "at most 256 characters" in scenario["description"]
    labels = schemas["runner.v1.SubmitRunRequest"]["properties"]["labels"]
    assert labels["description"].startswith("At most 32 labels") and "at most 32 entries" in labels["description"]
    timeout = schemas["runner.v1.SubmitRunRequest"]["properties"]["timeout"]
    assert "The run's own deadline" in timeout["description"] and "2592000s" in timeout["description"]
    assert schemas["runner.v1.DiagnosticSpec"]["description"] == "A synthetic workload for operators and benchmarks."
    assert "- `CPU`: each tick spins the CPU" in schemas["runner.v1.DiagnosticSpec.Mode"]["description"]
    page_size = next(p for p in document["paths"]["/v1/runs"]["get"]["parameters"] if p["name"] == "page_size")
    assert "0 means the default (50)" in page_size["description"] and "from 0 to 500" in page_size["description"]


def test_without_comments_the_document_still_names_every_method():
    document = openapi.document(RULES)
    validate_openapi(document)
    assert document["paths"]["/v1/runs"]["post"]["summary"] == "runner.v1.RunnerService.SubmitRun"


def test_summary_is_the_first_sentence():
    assert openapi.summary_of("Streams events: stored ones first.") == "Streams events."
    assert openapi.summary_of("One run by id. NOT_FOUND otherwise.") == "One run by id."


async def test_docs_serve_swagger_ui_from_the_package_and_the_commented_document(stack):
    _, gw = stack
    page = await gw.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts == ["/docs/assets/swagger-ui-bundle.js", "/static/docs.js"]
    assert "<script>" not in page.text  # no inline script
    for path in [*scripts, "/docs/assets/swagger-ui.css"]:
        asset = await gw.client.get(path)
        assert asset.status_code == 200, path
        assert asset.headers["x-content-type-options"] == "nosniff"
    bundle = await gw.client.get("/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text and len(bundle.content) > 500_000
    assert (await gw.client.get("/docs/assets/index.html")).status_code == 404  # only what the page needs
    redoc = await gw.client.get("/redoc")
    assert redoc.status_code == 308 and redoc.headers["location"] == "/docs"
    document = json.loads((await gw.client.get("/openapi.json")).text)
    assert document["paths"]["/v1/runs/{run_id}:cancel"]["post"]["summary"] == "Requests cancellation."


async def test_operator_pages_are_sent_with_a_strict_policy(stack):
    _, gw = stack
    for path in ("/", "/runs/0123456789abcdef", "/submit", "/admin"):
        page = await gw.client.get(path)
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "style-src 'self';" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text and " style=" not in page.text
        assert not re.search(r"\son[a-z]+=", page.text)  # no inline event handlers
        for src in re.findall(r'src="([^"]+)"', page.text):
            script = await gw.client.get(src)
            assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript"), src
    missing = await gw.client.get("/static/nothing.js")
    assert missing.status_code == 404
    # The API keeps its own rules under the pages: a form post is still refused.
    form = await gw.client.post(
        "/v1/runs", content="spec=x", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
