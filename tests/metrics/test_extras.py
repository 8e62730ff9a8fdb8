"""The exporters stay optional: importing leaderelection pulls neither prometheus_client nor
OpenTelemetry, a missing extra is an ImportError naming it, and without an OpenTelemetry SDK
the instrumentation is a no-op."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_library_pulls_no_exporter() -> None:
    # redis-py (and FastAPI) import OpenTelemetry themselves when it is installed: the library
    # must add no exporter module to what its dependencies load.
    result = run(
        """
        import sys

        def exporters():
            roots = ("prometheus_client", "opentelemetry")
            return {m for m in sys.modules if m.split(".")[0] in roots}

        import anyio, pydantic, redis, redis.asyncio
        before = exporters()
        import leaderelection, leaderelection.sync, leaderelection.testing
        print(sorted(exporters() - before))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_library_works_without_the_exporters_installed() -> None:
    result = run(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if neither were installed
        sys.modules["opentelemetry"] = None
        import asyncio
        from leaderelection import ElectionConfig, LeaderElection
        from leaderelection.testing import FakeClock, MemoryServer

        async def main():
            clock = FakeClock()
            server = MemoryServer(clock)
            config = ElectionConfig(name="bare")
            async with LeaderElection(None, config, clock=clock, store=server.store(config)) as e:
                return e.is_leader

        print(asyncio.run(main()))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("module", "dependency", "extra"),
    [
        ("leaderelection.prometheus", "prometheus_client", "prometheus"),
        ("leaderelection.opentelemetry", "opentelemetry", "otel"),
    ],
)
def test_a_missing_extra_is_an_import_error_that_names_it(
    module: str, dependency: str, extra: str
) -> None:
    result = run(
        f"""
        import sys
        sys.modules[{dependency!r}] = None  # as if it were not installed
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"leaderelection-redis[{extra}]" in result.stdout, result.stdout


def test_without_an_sdk_the_instrumentation_is_a_no_op() -> None:
    result = run(
        """
        import asyncio, sys
        from leaderelection import ElectionConfig, LeaderElection
        from leaderelection.opentelemetry import LeaderElectionInstrumentor
        from leaderelection.testing import FakeClock, MemoryServer
        from opentelemetry import metrics, trace

        LeaderElectionInstrumentor().instrument()  # the global providers: the API's no-ops

        async def main():
            clock = FakeClock()
            server = MemoryServer(clock)
            config = ElectionConfig(name="no-sdk")
            async with LeaderElection(None, config, clock=clock, store=server.store(config)) as e:
                await clock.advance(7)
                await e.resign()
                return e.statistics()

        stats = asyncio.run(main())
        print(
            stats.terms_won,
            stats.renewals,
            type(trace.get_tracer_provider()).__name__,
            type(metrics.get_meter_provider()).__name__,
        )
        """
    )
    assert result.returncode == 0, result.stderr
    # The election ran as usual, instrumented, on the API's no-op providers.
    assert result.stdout.split() == ["1", "2", "ProxyTracerProvider", "_ProxyMeterProvider"]
