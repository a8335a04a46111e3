"""File helpers: atomic writes, one error type for bad input, and a script entry guard."""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(Exception):
    """A user's input is wrong. The message is one line naming the file, column or row."""


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; use the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    return json.loads(path.read_text())


def write_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def read_npz(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def keep_epochs_before(path: Path, epoch: int) -> None:
    """Drop the records of epochs >= `epoch` from a metrics.jsonl (a resumed run writes them again)."""
    path = Path(path)
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        atomic_write_text(path, "".join(line + "\n" for line in lines if json.loads(line)["epoch"] < epoch))


def run_main(main) -> None:
    """Run a script's `main`, turning an InputError into a one-line message and exit status 2."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
