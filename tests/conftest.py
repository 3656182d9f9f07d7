"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def no_fetched_footage(tmp_path_factory, monkeypatch):
    """Tests never see footage fetched into the user's cache (`patchflow data fetch`): what they
    train or list must not depend on this machine's state."""
    monkeypatch.setenv("PATCHFLOW_DATA", str(tmp_path_factory.mktemp("patchflow-data")))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a loaded 2-core machine two OpenMP threads
    that wait on each other make a file up to ~10x slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
