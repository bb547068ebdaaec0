"""Fixtures for end-to-end tests: a real PostgreSQL, a key file, env database URLs."""
from __future__ import annotations

import os

import pytest

from tests.pg import ThrowawayCluster, server_from_environment
from tests.sample_db import create_varied_database


@pytest.fixture(scope="session")
def pg():
    """The PostgreSQL server under test (PG* variables, or a throwaway cluster)."""
    server = server_from_environment()
    if server is not None:
        yield server
        return
    cluster = ThrowawayCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def master_key() -> str:
    """A fresh random key for each test: never a literal key in the tree."""
    return os.urandom(32).hex()


@pytest.fixture
def key_file(tmp_path, master_key):
    path = tmp_path / "master.key"
    path.write_text(master_key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def database_factory(pg):
    """Make databases that are dropped after the test."""
    made: list[str] = []

    def make(create=None) -> str:
        name = create(pg) if create else pg.create_database()
        made.append(name)
        return name

    make.adopt = made.append  # for databases that the code under test creates
    yield make
    for name in made:
        pg.drop_database(name)


@pytest.fixture
def keyed_environ(environ, key_file):
    """`environ` plus the key file, and no database URL yet."""
    return {**environ, "HOST_MASTER_KEY_FILE": str(key_file)}


@pytest.fixture
def source_db(database_factory):
    """A database holding every awkward type (tests/sample_db.py)."""
    return database_factory(create_varied_database)


@pytest.fixture
def dev_environ(keyed_environ, pg, source_db):
    """dev points at the varied database; prod at a database that does not exist."""
    return {
        **keyed_environ,
        "CARABASE_DEV_DATABASE_URL": pg.url(source_db),
        "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent"),
    }
