"""The deployment files, checked offline: compose.yml against the compose-spec JSON schema kept in
deploy/schemas/ (with check-jsonschema), every Kubernetes manifest under deploy/ against the
schemas kubernetes-validate ships, the Dockerfile's essentials, and the properties that make the
replicas work: health-ordered start, gRPC probes on liveness/readiness, termination grace longer
than drain plus shutdown grace, a PodDisruptionBudget and a headless Service over the runner pods.

Each property check returns the problems it finds, so the tests can also show that a broken
file is caught (the "broken_*" tests)."""

from __future__ import annotations

import copy
import pathlib
import re
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

REPO = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yml"
COMPOSE_SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MANIFESTS = sorted(p for p in (REPO / "deploy").rglob("*") if p.suffix in (".yaml", ".yml"))
# The oldest Kubernetes still widely run with native gRPC probes, and the newest the package knows.
K8S_VERSIONS = sorted({"1.30.0", f"{latest_version()}.0"})
# The runner's defaults (runner_service/settings.py) when a file does not set them.
DEFAULT_DRAIN_S, DEFAULT_GRACE_S = 1.0, 5.0
RUNNER_COMMAND = ["python", "-m", "runner_service"]
GATEWAY_COMMAND = ["python", "-m", "gateway"]


# ------------------------------------------------------------------------------------ helpers


def duration_s(value: object) -> float:
    """A compose duration ("20s", "1m30s", "1.5s", "500ms") in seconds."""
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {value!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def env_map(environment: object) -> dict[str, str]:
    """A compose environment (mapping or list of NAME=value) as a dict."""
    if isinstance(environment, dict):
        return {str(k): str(v) for k, v in environment.items()}
    return dict(str(item).split("=", 1) for item in environment or [])


def command_of(value: object) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]


def depends_condition(service: dict, name: str) -> str | None:
    """The condition a compose service waits for before `name` starts (None: no dependency)."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):  # the short form waits only for the start
        return "service_started" if name in depends else None
    return (depends[name] or {}).get("condition", "service_started") if name in depends else None


def check_jsonschema(instance: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(COMPOSE_SCHEMA), str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_manifests() -> list[tuple[pathlib.Path, dict]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path, doc))
    return found


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line:
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str]:
    """A JSON exec-form argument list (["a", "b"]) or a shell-form string, as words."""
    arguments = arguments.strip()
    if arguments.startswith("["):
        return [str(v) for v in yaml.safe_load(arguments)]
    return shlex.split(arguments)


# ------------------------------------------------------------------------------------ Dockerfile


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    stages = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    if not stages:
        return ["no FROM"]
    final = instructions[stages[-1] :]
    args = {k: v for kw, rest in instructions for k, _, v in [rest.partition("=")] if kw == "ARG"}
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), final[0][1].split()[0])
    if not re.fullmatch(r"python:3\.1[1-9]-slim", base):
        problems.append(f"final base image {base!r} is not python:3.1x-slim")
    users = [rest for kw, rest in final if kw == "USER"]
    if not users:
        problems.append("no USER in the final stage: the services would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"USER {users[-1]} is root")
    health = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    if not health:
        problems.append("no HEALTHCHECK")
    elif "runner_service.probe" not in health[-1] or " CMD " not in f" {health[-1]} ":
        problems.append(f"HEALTHCHECK does not run the probe module: {health[-1]}")
    exposed = {word.split("/")[0] for kw, rest in final if kw == "EXPOSE" for word in rest.split()}
    for port in ("50051", "8080"):
        if port not in exposed:
            problems.append(f"port {port} not exposed")
    env_text = " ".join(rest for kw, rest in final if kw == "ENV")
    for setting in ("RUNNER_LISTEN=0.0.0.0:50051", "GATEWAY_LISTEN=0.0.0.0:8080"):
        if setting not in env_text.split():
            problems.append(f"ENV lacks {setting}")
    installs = [rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest]
    if not any(re.search(r"\.\[[^]]*\]", rest) and "postgres" in rest and "fast" in rest for rest in installs):
        problems.append("the project is not installed with its postgres and fast extras")
    cmds = [exec_form(rest) for kw, rest in final if kw == "CMD"]
    if not cmds or cmds[-1] != RUNNER_COMMAND:
        problems.append(f"default command is not {RUNNER_COMMAND}: {cmds[-1:] or None}")
    return problems


def final_workdir_and_uid(text: str) -> tuple[str, str]:
    instructions = dockerfile_instructions(text)
    start = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    final = instructions[start:]
    workdir = [rest for kw, rest in final if kw == "WORKDIR"][-1]
    user = [rest for kw, rest in final if kw == "USER"][-1]
    return workdir, user.split(":")[0]


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern matching the path or one of
    its parent directories wins; "!" re-includes; "*" stays within one path segment."""

    def regex(pattern: str) -> re.Pattern:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if any(regex(pattern).fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_has_a_non_root_user_a_probe_healthcheck_and_both_services():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_every_file_the_image_copies_is_in_the_build_context():
    patterns = DOCKERIGNORE.read_text().splitlines()
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    sources = [
        word for kw, rest in instructions if kw == "COPY" and "--from=" not in rest for word in rest.split()[:-1]
    ]
    assert "pyproject.toml" in sources and "README.md" in sources  # pyproject's readme
    for source in sources:
        assert (REPO / source).exists(), source
        files = [REPO / source] if (REPO / source).is_file() else list((REPO / source).rglob("*.py"))
        for path in files:
            relative = path.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignore_excludes(patterns, relative), f"{relative} is left out of the build context"
    # What the image has no use for stays out of it.
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "var/runner.db",
        "tests/conftest.py",
        "runner_service/__pycache__/x.pyc",
    ):
        assert dockerignore_excludes(patterns, path), path


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("USER 10001:10001\n", "", "no USER"),
        ("USER 10001:10001\n", "USER root\n", "is root"),
        ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
        ("EXPOSE 50051 8080", "EXPOSE 50051", "8080 not exposed"),
        ("RUNNER_LISTEN=0.0.0.0:50051", "RUNNER_LISTEN=127.0.0.1:50051", "RUNNER_LISTEN"),
        ('".[postgres,fast]"', '"."', "extras"),
    ],
)
def test_a_broken_dockerfile_is_caught(old, new, problem):
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert any(problem in p for p in problems), problems


# ------------------------------------------------------------------------------------ compose.yml


def compose_problems(doc: dict) -> list[str]:
    problems = []
    services = doc.get("services") or {}
    expected = {"postgres", "runner-1", "runner-2", "gateway"}
    if set(services) != expected:
        problems.append(f"services are {sorted(services)}, not {sorted(expected)}")
    for name, service in services.items():
        test = (service.get("healthcheck") or {}).get("test")
        if not test or (service.get("healthcheck") or {}).get("disable"):
            problems.append(f"{name}: no healthcheck")
    postgres = services.get("postgres", {})
    if not str(postgres.get("image", "")).startswith("postgres:"):
        problems.append("postgres: not the official postgres image")
    if "pg_isready" not in " ".join(command_of((postgres.get("healthcheck") or {}).get("test"))):
        problems.append("postgres: the healthcheck is not pg_isready")
    volumes = [str(v).split(":")[0] if isinstance(v, str) else v.get("source") for v in postgres.get("volumes", [])]
    if not any(v in (doc.get("volumes") or {}) for v in volumes):
        problems.append("postgres: no named volume for its data")
    for name in ("runner-1", "runner-2"):
        runner = services.get(name, {})
        env = env_map(runner.get("environment"))
        if env.get("RUNNER_REPLICA") != name:
            problems.append(f"{name}: RUNNER_REPLICA is {env.get('RUNNER_REPLICA')!r}")
        if env.get("RUNNER_DATABASE_URL") != "postgresql+psycopg://runner:runner@postgres:5432/runner":
            problems.append(f"{name}: RUNNER_DATABASE_URL is {env.get('RUNNER_DATABASE_URL')!r}")
        if env.get("RUNNER_LISTEN") != "0.0.0.0:50051":
            problems.append(f"{name}: RUNNER_LISTEN is {env.get('RUNNER_LISTEN')!r}")
        if command_of(runner.get("command")) != RUNNER_COMMAND:
            problems.append(f"{name}: command is {runner.get('command')!r}")
        if depends_condition(runner, "postgres") != "service_healthy":
            problems.append(f"{name}: does not wait for postgres service_healthy")
        if "runner_service.probe" not in command_of((runner.get("healthcheck") or {}).get("test")):
            problems.append(f"{name}: the healthcheck does not use the probe module")
        aliases = (((runner.get("networks") or {}).get("default")) or {}).get("aliases") or []
        if "runners" not in aliases:
            problems.append(f"{name}: no network alias 'runners'")
        needed = float(env.get("RUNNER_DRAIN_PERIOD_S", DEFAULT_DRAIN_S)) + float(
            env.get("RUNNER_SHUTDOWN_GRACE_S", DEFAULT_GRACE_S)
        )
        grace = duration_s(runner.get("stop_grace_period", "10s"))
        if grace <= needed:
            problems.append(f"{name}: stop_grace_period {grace:g} s is not longer than drain + grace {needed:g} s")
    gateway = services.get("gateway", {})
    env = env_map(gateway.get("environment"))
    if env.get("GATEWAY_UPSTREAM") != "dns:///runners:50051":
        problems.append(f"gateway: GATEWAY_UPSTREAM is {env.get('GATEWAY_UPSTREAM')!r}")
    if env.get("GATEWAY_LB_POLICY", "round_robin") != "round_robin":
        problems.append("gateway: not round_robin")
    if env.get("GATEWAY_LISTEN") != "0.0.0.0:8080":
        problems.append(f"gateway: GATEWAY_LISTEN is {env.get('GATEWAY_LISTEN')!r}")
    if command_of(gateway.get("command")) != GATEWAY_COMMAND:
        problems.append(f"gateway: command is {gateway.get('command')!r}")
    for name in ("runner-1", "runner-2"):
        if depends_condition(gateway, name) != "service_healthy":
            problems.append(f"gateway: does not wait for {name} service_healthy")
    if "/health/ready" not in " ".join(command_of((gateway.get("healthcheck") or {}).get("test"))):
        problems.append("gateway: the healthcheck does not ask /health/ready")
    if "127.0.0.1:8080:8080" not in [str(p) for p in gateway.get("ports", [])]:
        problems.append(f"gateway: port 8080 not published on 127.0.0.1: {gateway.get('ports')}")
    return problems


def test_compose_file_is_valid_against_the_compose_spec_schema():
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_starts_in_health_order_with_probes_and_enough_stop_grace():
    assert compose_problems(yaml.safe_load(COMPOSE.read_text())) == []


def test_a_compose_file_with_an_unknown_key_fails_the_schema(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    interval: 5s\n", "    intervall: 5s\n", 1))
    assert broken.read_text() != COMPOSE.read_text()
    result = check_jsonschema(broken)
    assert result.returncode != 0, result.stdout
    assert "intervall" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda d: d["services"]["runner-2"].pop("healthcheck"), "runner-2: no healthcheck"),
        (lambda d: d["services"]["gateway"]["depends_on"].pop("runner-1"), "does not wait for runner-1"),
        (lambda d: d["services"]["runner-1"].update(depends_on=["postgres"]), "does not wait for postgres"),
        (lambda d: d["services"]["runner-1"].update(stop_grace_period="6s"), "stop_grace_period"),
        (lambda d: d["services"]["runner-2"]["environment"].update(RUNNER_REPLICA="runner-1"), "RUNNER_REPLICA"),
        (lambda d: d["services"]["runner-2"].pop("networks"), "alias"),
        (lambda d: d["services"]["gateway"]["environment"].update(GATEWAY_UPSTREAM="runner-1:50051"), "UPSTREAM"),
    ],
)
def test_a_broken_compose_file_is_caught(break_it, problem):
    doc = copy.deepcopy(yaml.safe_load(COMPOSE.read_text()))
    break_it(doc)
    problems = compose_problems(doc)
    assert any(problem in p for p in problems), problems


# ------------------------------------------------------------------------------------ Kubernetes


def by_kind(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def manifest_problems(docs: list[dict], workdir: str = "/app", uid: str = "10001") -> list[str]:
    problems = []
    runner = by_kind(docs, "Deployment", "runner")
    pod = runner["spec"]["template"]["spec"]
    labels = runner["spec"]["template"]["metadata"]["labels"]
    if not selects(runner["spec"]["selector"]["matchLabels"], labels):
        problems.append("runner: the Deployment's selector does not select its pods")
    if runner["spec"].get("replicas") != 2:
        problems.append(f"runner: {runner['spec'].get('replicas')} replicas")
    (container,) = [c for c in pod["containers"] if c["name"] == "runner"]
    if container.get("args") != RUNNER_COMMAND or "command" in container:
        problems.append("runner: not started as the image's `python -m runner_service` under its entrypoint")
    for probe, service in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        grpc = (container.get(probe) or {}).get("grpc") or {}
        if grpc.get("service") != service or grpc.get("port") != 50051:
            problems.append(f"runner: {probe} is not a gRPC probe of {service!r} on 50051: {container.get(probe)}")
    env = container_env(container)
    plain = {name: item.get("value") for name, item in env.items()}
    needed = float(plain.get("RUNNER_DRAIN_PERIOD_S") or DEFAULT_DRAIN_S) + float(
        plain.get("RUNNER_SHUTDOWN_GRACE_S") or DEFAULT_GRACE_S
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        problems.append(f"runner: terminationGracePeriodSeconds {grace} is not longer than drain + grace {needed:g}")
    for name in ("RUNNER_DRAIN_PERIOD_S", "RUNNER_SHUTDOWN_GRACE_S"):
        if name not in plain:
            problems.append(f"runner: {name} not set")
    if plain.get("RUNNER_PROFILE") != "production":
        problems.append("runner: RUNNER_PROFILE is not production")
    if plain.get("RUNNER_LISTEN") != "0.0.0.0:50051":
        problems.append("runner: RUNNER_LISTEN is not 0.0.0.0:50051")
    replica = (env.get("RUNNER_REPLICA", {}).get("valueFrom") or {}).get("fieldRef", {})
    if replica.get("fieldPath") != "metadata.name":
        problems.append("runner: RUNNER_REPLICA is not the pod's name (downward API)")
    secret_ref = (env.get("RUNNER_DATABASE_URL", {}).get("valueFrom") or {}).get("secretKeyRef")
    if not secret_ref:
        problems.append("runner: RUNNER_DATABASE_URL is not read from a Secret")
    else:
        secrets = [d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"] == secret_ref["name"]]
        if not any(secret_ref["key"] in {**s.get("stringData", {}), **s.get("data", {})} for s in secrets):
            problems.append(f"runner: no example Secret {secret_ref['name']} with key {secret_ref['key']}")
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(part) or {}):
            problems.append(f"runner: no cpu and memory {part}")
    pod_security = pod.get("securityContext") or {}
    security = container.get("securityContext") or {}
    if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))):
        problems.append("runner: runAsNonRoot is not set")
    if str(security.get("runAsUser", pod_security.get("runAsUser", uid))) != uid:
        problems.append(f"runner: runAsUser is not the image's user {uid}")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("runner: the root filesystem is writable")
    else:
        # What the runner writes must be on a volume: its var/ (the audit log) and /tmp.
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
        audit = plain.get("RUNNER_AUDIT_LOG_PATH") or "var/audit.log"
        audit_dir = str(pathlib.PurePosixPath(workdir, audit).parent)
        for path in (audit_dir, "/tmp"):
            if mounts.get(path) not in empty_dirs:
                problems.append(f"runner: {path} is not a writable emptyDir")

    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    runner_pdbs = [p for p in pdbs if selects(p["spec"].get("selector", {}).get("matchLabels", {}), labels)]
    if not runner_pdbs:
        problems.append("no PodDisruptionBudget selects the runner pods")
    elif runner_pdbs[0]["spec"].get("minAvailable") != 1:
        problems.append(f"runner PDB: minAvailable is {runner_pdbs[0]['spec'].get('minAvailable')}")

    service = by_kind(docs, "Service", "runner")
    if service["spec"].get("clusterIP") != "None":
        problems.append("runner Service: not headless (clusterIP: None)")
    if not selects(service["spec"].get("selector", {}), labels):
        problems.append("runner Service: does not select the runner pods")
    if 50051 not in [p.get("port") for p in service["spec"].get("ports", [])]:
        problems.append("runner Service: no port 50051")

    gateway = by_kind(docs, "Deployment", "gateway")
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    (gw,) = gateway["spec"]["template"]["spec"]["containers"]
    if gw.get("args") != GATEWAY_COMMAND or "command" in gw:
        problems.append("gateway: not started as `python -m gateway`")
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        if ((gw.get(probe) or {}).get("httpGet") or {}).get("path") != path:
            problems.append(f"gateway: {probe} is not an HTTP probe of {path}")
    gw_env = {name: item.get("value") for name, item in container_env(gw).items()}
    upstream = re.fullmatch(
        r"dns:///([a-z0-9-]+)(?:\.[a-z0-9-]+\.svc\.cluster\.local)?:(\d+)", gw_env.get("GATEWAY_UPSTREAM") or ""
    )
    if not upstream or upstream.group(1) != service["metadata"]["name"] or upstream.group(2) != "50051":
        problems.append(
            f"gateway: GATEWAY_UPSTREAM {gw_env.get('GATEWAY_UPSTREAM')!r} is not the runner Service over DNS"
        )
    if gw_env.get("GATEWAY_LB_POLICY", "round_robin") != "round_robin":
        problems.append("gateway: not round_robin")
    if gw_env.get("GATEWAY_LISTEN") != "0.0.0.0:8080":
        problems.append("gateway: GATEWAY_LISTEN is not 0.0.0.0:8080")
    gw_service = by_kind(docs, "Service", "gateway")
    if not selects(gw_service["spec"].get("selector", {}), gateway_labels):
        problems.append("gateway Service: does not select the gateway pods")
    if container["image"] != gw["image"]:
        problems.append("runner and gateway use different images")
    return problems


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version):
    docs = load_manifests()
    assert len(docs) >= 6, MANIFESTS
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(REPO)}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_manifests_probe_liveness_and_readiness_and_outlast_the_drain():
    workdir, uid = final_workdir_and_uid(DOCKERFILE.read_text())
    assert manifest_problems([doc for _, doc in load_manifests()], workdir, uid) == []


def runner_container(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment", "runner")["spec"]["template"]["spec"]["containers"][0]


def test_a_manifest_with_an_unknown_key_fails_the_kubernetes_schema():
    docs = [doc for _, doc in load_manifests()]
    runner = copy.deepcopy(by_kind(docs, "Deployment", "runner"))
    runner["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["servce"] = "liveness"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(runner, K8S_VERSIONS[-1], strict=True)
    runner = copy.deepcopy(by_kind(docs, "Deployment", "runner"))
    runner["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(runner, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda d: runner_container(d)["readinessProbe"]["grpc"].update(service="liveness"), "readinessProbe"),
        (lambda d: runner_container(d)["livenessProbe"].pop("grpc"), "livenessProbe"),
        (
            lambda d: by_kind(d, "Deployment", "runner")["spec"]["template"]["spec"].update(
                terminationGracePeriodSeconds=22
            ),
            "terminationGracePeriodSeconds",
        ),
        (lambda d: by_kind(d, "Service", "runner")["spec"].pop("clusterIP"), "headless"),
        (
            lambda d: by_kind(d, "PodDisruptionBudget", "runner")["spec"]["selector"]["matchLabels"].update(
                {"app.kubernetes.io/name": "other"}
            ),
            "PodDisruptionBudget",
        ),
        (lambda d: runner_container(d)["securityContext"].update(readOnlyRootFilesystem=False), "writable"),
        (lambda d: runner_container(d)["volumeMounts"].pop(), "/tmp"),
        (
            lambda d: by_kind(d, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "GATEWAY_LB_POLICY", "value": "pick_first"}
            ),
            "round_robin",
        ),
    ],
)
def test_a_broken_manifest_is_caught(break_it, problem):
    docs = copy.deepcopy([doc for _, doc in load_manifests()])
    break_it(docs)
    problems = manifest_problems(docs)
    assert any(problem in p for p in problems), problems
