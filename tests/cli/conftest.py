"""Fixtures of the command-line tests that talk to the shared Redis server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import require_service


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared server with a fresh key prefix, whose keys are deleted afterwards."""
    require_service("redis", "127.0.0.1", 6379)
    from tests.integration.redis_helpers import drop_prefix

    prefix = f"tfcli{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    yield url
    drop_prefix(url, prefix)
