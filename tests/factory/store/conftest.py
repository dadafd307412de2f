"""The warehouse tests run twice: on the default layout (SQLite catalog, local files) and on a
PostgreSQL catalog with its data files in S3 (moto), each a fresh database and bucket prefix."""

from __future__ import annotations

import pytest

from tests.conftest import BACKENDS, make_warehouse


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def wh(request, tmp_path, backend):
    warehouse = make_warehouse(request, tmp_path / "wh", backend)
    yield warehouse
    warehouse.close()
