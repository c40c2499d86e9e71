"""Shared by the flow tests: one Prefect test harness (ephemeral API, temporary home) per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server: starts a real Prefect server and `midicorpus serve` on 127.0.0.1")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    home = tempfile.mkdtemp(prefix="prefect-home-")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = home  # before prefect is imported
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness():
            yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)
