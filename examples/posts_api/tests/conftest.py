"""The posts API's tests: each test gets its own migrated database from dbkit's pytest plugin
(``dbkit_url``) and an app connected to it.

The admin server the plugin makes those databases on: DBKIT_TEST_ADMIN_URL when set (a CI
service, as for dbkit's own suite), else DBKIT_ADMIN_URL, else a throwaway PostgreSQL that this
file starts in a temporary directory and removes at the end, so a run leaves nothing behind.
(An app of your own sets DBKIT_ADMIN_URL, or lets the plugin use dbkit's local server.)

The app runs as the owner of each test database, the plugin's ``dbkit_test`` role: the plugin
has no application role. The walkthrough test runs it as ``posts_app``, the app role that
``dbkit setup --app-role`` makes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbkit.server import LocalServer

EXAMPLE = Path(__file__).resolve().parent.parent
# the app is imported from its directory, as uvicorn does there: no install needed (pytest
# puts this directory on sys.path too, the tests being a package, but not under --import-mode
# importlib)
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from fastapi.testclient import TestClient  # noqa: E402
from posts_api.main import create_app  # noqa: E402

from .posts_api_helpers import Api  # noqa: E402

_SERVERS: list[LocalServer] = []  # the throwaway servers this process started


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the throwaway server after every fixture is gone: the plugin drops its clones
    on it when its session fixture ends, whatever order pytest ends session fixtures in."""
    for server in _SERVERS:
        server.destroy()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def posts_api_admin(request: pytest.FixtureRequest) -> Iterator[str]:
    """The admin server's URL, made known to the plugin for exactly as long as it takes to
    build its session (so nothing else in this process sees the variable)."""
    given = os.environ.get("DBKIT_TEST_ADMIN_URL") or os.environ.get("DBKIT_ADMIN_URL")
    if given:
        url = given
    else:
        shm = Path("/dev/shm")  # a throwaway cluster needs no durability: RAM is faster
        base = Path(tempfile.mkdtemp(prefix="posts-api-test-",
                                     dir=str(shm) if os.access(shm, os.W_OK) else None))
        os.chmod(base, 0o711)  # as root the server runs as 'postgres', which must reach it
        server = LocalServer(base / "cluster", fast=True)
        _SERVERS.append(server)
        server.start()
        url = server.admin_url().render(reveal=True)
    old = os.environ.get("DBKIT_ADMIN_URL")
    os.environ["DBKIT_ADMIN_URL"] = url
    try:
        request.getfixturevalue("dbkit_template")  # the plugin reads its settings now
    finally:
        if old is None:
            del os.environ["DBKIT_ADMIN_URL"]
        else:
            os.environ["DBKIT_ADMIN_URL"] = old
    yield url


@pytest.fixture
def client(posts_api_admin: str, dbkit_url: str) -> Iterator[TestClient]:
    """The app on this test's own database, started (its pool open) and stopped after."""
    with TestClient(create_app(dbkit_url, pool_size=10)) as c:
        yield c


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)
