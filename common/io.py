"""File helpers: atomic writes, one error type for bad input, and a script entry guard."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


UMASK = os.umask(0)
os.umask(UMASK)


class InputError(Exception):
    """A user's input is wrong. The message is one line naming the file, column or row."""


class Stage:
    """Hands out temporary paths beside their targets; `staged_files` renames them all onto the targets."""

    def __init__(self):
        self.moves: list[tuple[Path, Path]] = []

    def __call__(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes owner-only files; use the usual permissions
        self.moves.append((Path(tmp), path))
        return Path(tmp)


@contextmanager
def staged_files():
    """Write several files as a unit: each `stage(path)` is a temporary path beside `path`; when the
    block succeeds all are renamed onto their targets, when it fails all are removed (old files stay)."""
    stage = Stage()
    try:
        yield stage
        for tmp, path in stage.moves:
            os.replace(tmp, path)
    finally:
        for tmp, _ in stage.moves:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    with staged_files() as stage:
        yield stage(path)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def json_text(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json_text(obj))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # truncated or overwritten
        raise InputError(f"{path}: not readable JSON ({type(e).__name__}); rerun the step that wrote it") from None


def write_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


CSV_CHUNK_ROWS = 200_000  # rows formatted at a time by write_csv (bounds the Python strings alive at once)


def write_csv(path: Path, columns: dict[str, np.ndarray], formats: dict[str, str] | None = None) -> None:
    """Write equal-length columns as a CSV with a header, each row formatted by one %-template (`formats` maps a
    column to its template, default "%d"). The same text as pandas' to_csv(index=False, float_format=...) for
    numeric columns, about twice as fast."""
    names = list(columns)
    template = ",".join((formats or {}).get(n, "%d") for n in names).__mod__
    n_rows = len(columns[names[0]]) if names else 0
    with open(path, "w", newline="") as f:
        f.write(",".join(names) + "\n")
        for s in range(0, n_rows, CSV_CHUNK_ROWS):
            rows = zip(*(np.asarray(columns[n][s:s + CSV_CHUNK_ROWS]).tolist() for n in names))
            f.write("\n".join(map(template, rows)) + "\n")


def read_npz(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # truncated or overwritten
        raise InputError(f"{path}: not a readable .npz ({type(e).__name__}); rerun the step that wrote it") from None


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def keep_epochs_before(path: Path, epoch: int) -> None:
    """Drop the records of epochs >= `epoch` from a metrics.jsonl (a resumed run writes them again)."""
    path = Path(path)
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        atomic_write_text(path, "".join(line + "\n" for line in lines if json.loads(line)["epoch"] < epoch))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying where the work stopped and how to continue it."""


INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by SIGINT


@contextmanager
def deferred_interrupt():
    """Hold a Ctrl-C that arrives inside the block until the block has finished, then raise it: work that must
    end together (a checkpoint and the note of what it holds) is never cut between its parts."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies in the chain of errors that raised `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def run_main(main) -> None:
    """Run a script's `main`, turning each expected failure into one line on stderr: an InputError
    (status 2), an operating-system error such as a full disk or an unwritable path (status 1), and
    Ctrl-C (status 130)."""
    try:
        try:
            main()
        except Exception as e:  # a Ctrl-C that library code wrapped in another error is still a Ctrl-C
            if caused_by_interrupt(e):
                raise KeyboardInterrupt from e
            raise
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"{e}" if isinstance(e, Interrupted) else "interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; fix it and run this step again", file=sys.stderr)
        sys.exit(1)
