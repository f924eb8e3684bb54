"""`router pull` through huggingface_hub's real download code, against a stand-in hub on
loopback (HF_ENDPOINT): progress, resumption after a cut transfer, and the checksum."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakehub import FakeHub

REPO, FILE = "example/tiny-gguf", "tiny.Q4_0.gguf"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub(REPO, FILE, os.urandom(3 * 1024 * 1024))
    yield server
    server.stop()


def pull(tmp_path: Path, hub: FakeHub, name: str = "tiny") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "models.toml"
    config.write_text(
        f'[models.tiny]\ntier = "local"\nhf_repo = "{REPO}"\nhf_file = "{FILE}"\n'
        '[models.local-file]\ntier = "local"\npath = "absent.gguf"\n'
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
    }
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(
        [sys.executable, "-m", "router", "pull", name, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


def test_pull_downloads_checks_and_then_the_model_is_usable(tmp_path: Path, hub: FakeHub) -> None:
    out = pull(tmp_path, hub)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.read_bytes() == hub.content
    assert "checksum verified" in out.stderr and "3 MB" in out.stderr
    assert hub.ranges == [None]
    again = pull(tmp_path, hub)  # already there: nothing is downloaded again
    assert again.returncode == 0 and hub.ranges == [None]
    models = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "models",
            "--json",
            "--config",
            str(tmp_path / "models.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert '"usable": true' in models.stdout.split('"name": "tiny"')[1].split("}")[0]


def test_an_interrupted_pull_resumes_where_it_stopped(tmp_path: Path) -> None:
    # huggingface_hub writes in 10 MiB chunks: a cut after 15 MiB leaves the first 10 on disk.
    hub = FakeHub(REPO, FILE, os.urandom(24 * 1024 * 1024))
    hub.cut_next_at = 15 * 1024 * 1024
    cut = pull(tmp_path, hub)
    assert cut.returncode == 3 and "Traceback" not in cut.stderr
    assert cut.stderr.startswith("error: cannot download example/tiny-gguf/tiny.Q4_0.gguf")
    assert "run 'router pull' again to resume" in cut.stderr
    resumed = pull(tmp_path, hub)
    assert resumed.returncode == 0, resumed.stderr
    assert hub.ranges == [None, f"bytes={10 * 1024 * 1024}-"]  # only the rest was sent
    assert Path(resumed.stdout.strip()).read_bytes() == hub.content
    hub.stop()


def test_a_corrupt_download_is_deleted_and_said(tmp_path: Path, hub: FakeHub) -> None:
    hub.corrupt = True
    out = pull(tmp_path, hub)
    assert out.returncode == 3 and "is corrupt" in out.stderr and "deleted" in out.stderr
    blobs = list((tmp_path / "hub").rglob("blobs/*"))
    assert blobs == []  # nothing left for the router to load


def test_pull_explains_what_it_cannot_download(tmp_path: Path, hub: FakeHub) -> None:
    out = pull(tmp_path, hub, "local-file")
    assert out.returncode == 2 and "absent.gguf not found" in out.stderr
    assert "only hf_repo models are downloaded" in out.stderr
    assert pull(tmp_path, hub, "nope").returncode == 2
