"""Plain helpers for tests (not fixtures)."""
from __future__ import annotations

import shutil


def copy_warehouse(src: str, dst) -> str:
    """A private copy of a warehouse (Delta tables are folders with relative paths)."""
    shutil.copytree(src, dst)
    return str(dst)
