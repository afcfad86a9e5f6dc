"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A private data folder: the datasets are unpacked into it from the system copy."""
    return tmp_path_factory.mktemp("data")
