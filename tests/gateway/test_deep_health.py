"""/health/deep: the runner's resilience picture over HTTP, memoized, no secrets."""

from __future__ import annotations

from tests.gateway.test_http import free_port


async def test_deep_health_reports_thresholds_and_a_recommendation(start_runner, start_gateway):
    secret = "s3cr3t-admin-token"
    async with (
        start_runner(admin_token=secret, db_breaker_failure_threshold=4) as runner,
        start_gateway(runner.address, deep_health_ttl_s=0) as gw,
    ):
        response = await gw.client.get("/health/deep")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["recommendation"] == "observe" and not body.get("reasons")
        assert body["circuit"]["state"] == "CIRCUIT_CLOSED"
        assert body["circuit"]["failureThreshold"] == 4
        assert body["database"]["poolSize"] == 4 and body["database"]["readQueueMax"] == 64
        assert body["watchdog"]["policyState"] == "ALLOWED"
        assert body["workersAlive"] == 2 and body["workersSize"] == 2
        assert secret not in response.text and "sqlite:" not in response.text


async def test_deep_health_is_memoized_and_503_when_the_runner_is_gone(start_runner, start_gateway):
    async with start_runner() as runner, start_gateway(runner.address, deep_health_ttl_s=60) as gw:
        first = await gw.client.get("/health/deep")
        await runner.app.stop()
        again = await gw.client.get("/health/deep")
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()  # served from the memo, not asked again
    address = f"127.0.0.1:{free_port()}"
    async with start_gateway(address, deep_health_ttl_s=0) as gw:
        gone = await gw.client.get("/health/deep")
        assert gone.status_code == 503
        assert gone.json()["recommendation"] == "recover"
