"""Atomic file writes: write to a hidden temporary file beside the target, then rename.

Used by every tool that writes outputs (checkpoints, bundles, datasets, batch results), so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "remove_stale_temp_files", "TEMP_MARKER"]

# Temporary files are ".<name>.tmp-XXXXXXXX<suffix>": hidden (directory inputs skip dotfiles) and
# recognisable, so a run killed mid-write leaves nothing a rerun does not remove.
TEMP_MARKER = ".tmp-"


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Calls ``write(tmp_path)`` and renames the result to ``path`` (mode 0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Deletes the temporary files :func:`atomic_write` left in ``directory`` (a killed run's);
    call it only where no other writer is active (the batch run holds a lock)."""
    removed = []
    for p in Path(directory).glob(f".*{TEMP_MARKER}*"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
