"""One registry process shared by the API and client tests (starting one costs seconds);
tests keep apart by using their own device ids and registries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.cloud.helpers import RegistryProcess
from tests.conftest import make_station


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    rp = RegistryProcess.start(make_station(tmp_path_factory.mktemp("registry") / "station"))
    yield rp
    rp.stop()


@pytest.fixture
def dev_id() -> str:
    """A device id no other test uses."""
    return f"sn{uuid.uuid4().hex[:18]}"
