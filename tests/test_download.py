"""prepare_data downloads missing task files (here from a local HTTP server) into the cache only."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest

from datamodules.errors import DataError
from tests.conftest import datamodule_for


@pytest.fixture
def http_root(tmp_path, shared_fewclue):
    root = tmp_path / "served"
    (root / "eprstmt").mkdir(parents=True)
    for name in ("train_0.json", "dev_0.json", "test.json", "unlabeled.json"):
        shutil.copy(shared_fewclue / "eprstmt" / name, root / "eprstmt" / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_missing_files_are_downloaded_into_the_cache(http_root, tmp_path, shared_fewclue):
    empty_data_dir = tmp_path / "empty"
    empty_data_dir.mkdir()
    dm = datamodule_for("eprstmt", tmp_path / "run", empty_data_dir, f"data.download_url={http_root}")
    dm.prepare_data()
    dm.setup()
    cached = tmp_path / "cache" / "fewclue" / "eprstmt"
    assert (cached / "train_0.json").read_bytes() == (shared_fewclue / "eprstmt" / "train_0.json").read_bytes()
    assert (cached / "unlabeled.json").is_file()
    assert not (cached / "test_public.json").exists()  # optional file absent upstream: a 404 is fine
    assert list(empty_data_dir.iterdir()) == []  # nothing written into the data directory
    assert len(dm.train_rows) == 32


def test_offline_and_missing_says_how_to_point_at_the_data(tmp_path):
    dm = datamodule_for("eprstmt", tmp_path / "run", tmp_path / "nowhere", "data.download_url=http://127.0.0.1:9")
    with pytest.raises(DataError, match="FEWCLUE_DIR"):
        dm.prepare_data()
