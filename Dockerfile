# One image for both services; the command chooses:
#   python -m runner_service   (the default: gRPC on 0.0.0.0:50051)
#   python -m gateway          (REST on 0.0.0.0:8080)
# Build: docker build -t grpc-runner:0.1.0 .
# The HEALTHCHECK probes the runner (grpc.health.v1, service "readiness"); a gateway container
# overrides it with an HTTP check of /health/ready (see compose.yml).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# The project with its PostgreSQL driver and uvloop; the generated protobuf code is committed.
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY runner_service ./runner_service
COPY gateway ./gateway
# Bytecode is compiled here: the root filesystem may be read-only at run time.
RUN /opt/venv/bin/pip install ".[postgres,fast]"

FROM python:${PYTHON_VERSION}-slim
# tini as PID 1: forwards SIGTERM to the service and reaps any orphaned worker process.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 runner \
    && useradd --system --uid 10001 --gid runner --home-dir /app --no-create-home --shell /usr/sbin/nologin runner
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR \
    RUNNER_PROFILE=production \
    RUNNER_LISTEN=0.0.0.0:50051 \
    GATEWAY_LISTEN=0.0.0.0:8080 \
    RUNNER_METRICS_LISTEN=0.0.0.0:9464 \
    GATEWAY_METRICS_LISTEN=0.0.0.0:9465
WORKDIR /app
# var/ holds the audit log (and the SQLite file when no RUNNER_DATABASE_URL is given): the
# only place the services write, with /tmp (the worker processes' forkserver socket).
RUN mkdir var && chown runner:runner var
USER 10001:10001
EXPOSE 50051 8080 9464 9465
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "runner_service.probe", "--timeout", "3"]
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "runner_service"]
