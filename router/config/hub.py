"""Downloading a local model's GGUF from the Hugging Face hub (`router pull`).

huggingface_hub does the transfer: its cache layout (shared with every other tool that uses
it), a progress bar on stderr, and resumption: an interrupted download leaves a partial file
that the next pull continues with an HTTP Range request. The router then checks the file
against the hub's own SHA-256 (the ETag of a file stored with Git LFS, as GGUF files are) and
deletes it when it differs. `HF_ENDPOINT` points it at a mirror; `HF_HUB_CACHE` moves the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from router.errors import UnavailableError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def download(repo: str, filename: str) -> Path:
    """The file, downloaded into the hub cache if needed and checked; UnavailableError with a
    one-line reason when it cannot be (offline, no such repo or file, a corrupt transfer)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    where = f"{repo}/{filename} from {constants.ENDPOINT}"
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, filename))
        path = Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as exc:  # offline, 401/404, a dropped connection: one line, then retry
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UnavailableError(
            f"cannot download {where}: {type(exc).__name__}"
            + (f": {reason}" if reason else "")
            + "; run 'router pull' again to resume"
        ) from None
    expected = (meta.etag or "").strip('"').lower()
    if _SHA256.match(expected):
        actual = sha256(path)
        if actual != expected:
            _discard(path)
            raise UnavailableError(
                f"the download of {where} is corrupt (SHA-256 {actual[:12]}…, the hub says "
                f"{expected[:12]}…); it was deleted: run 'router pull' again"
            )
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _discard(path: Path) -> None:
    """Remove a cached file: the blob it links to and the link itself."""
    blob = path.resolve()
    for p in {blob, path}:
        with contextlib.suppress(OSError):
            os.unlink(p)
