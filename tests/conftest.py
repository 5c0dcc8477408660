"""Suite-wide settings: one torch thread per test process (pytest-xdist runs one process per core;
more threads than cores makes small-tensor code tens of times slower), no progress bars."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory, monkeypatch):
    """Generated datasets (mnist1d) are cached once per test session, never in the user's home."""
    cache = tmp_path_factory.getbasetemp().parent / "okdph-data-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("OKDPH_DATA", str(cache))
