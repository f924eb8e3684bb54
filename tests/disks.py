"""Disks that fail the way real ones do, for the ledger's tests: a small tmpfs that fills, and
a read-only bind mount. Mounting needs root (CI runs as root); elsewhere the tests skip."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `where` (made if missing)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def read_only(where: Path) -> Iterator[Path]:
    """`where`, an empty directory that cannot be written."""
    source = where.with_name(where.name + "-source")
    source.mkdir(parents=True, exist_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        f"mount --bind {source} {where} && mount -o remount,bind,ro {where}",
        shell=True,
        capture_output=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount read-only here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(disk: Path) -> Path:
    """Fill `disk` to the last byte; the filler file, to delete for space again."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler
