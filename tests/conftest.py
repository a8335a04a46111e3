"""Shared helpers: the repository root, running the numbered scripts, and the shared real data."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository root: the scripts live here
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"
SCRIPT_TIMEOUT = 300


def _script_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # small inputs: avoid spinning thread pools on a busy machine
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_script(*args, timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `python <args...>` in the repository root; stdout and stderr are captured as text."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_script_env())


def run_scripts(*argvs, timeout: float = SCRIPT_TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Run several independent `python <argv...>` commands at once (each imports torch: ~1-2 s of start-up).

    Returns their CompletedProcess results in the order given.
    """
    procs = []
    for argv in argvs:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        cmd = [sys.executable, *map(str, argv)]
        procs.append((cmd, subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True,
                                            env=_script_env()), out, err))
    results = []
    for cmd, p, out, err in procs:
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
        out.seek(0)
        err.seek(0)
        results.append(subprocess.CompletedProcess(cmd, rc, out.read(), err.read()))
        out.close()
        err.close()
    return results


def describe(p: subprocess.CompletedProcess) -> str:
    """A readable dump of a finished script for assertion messages."""
    return f"$ {' '.join(map(str, p.args))}\nrc={p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """The script failed cleanly: status 2, stderr exactly one line 'error: ...' containing every fragment."""
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, describe(p)
    assert p.returncode == 2, describe(p)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, describe(p)
    line = lines[0]
    assert line.startswith("error:"), describe(p)
    for frag in fragments:
        assert frag in line, f"{frag!r} not in {line!r}"
    return line


def leftover_tmp_files(folder: Path) -> list[str]:
    """Names of temporary files `.*.tmp` (what common.io.atomic_path creates) in `folder`, recursively."""
    folder = Path(folder)
    if not folder.exists():
        return []
    found = []
    for dirpath, _, files in os.walk(folder):
        found += [os.path.join(dirpath, f) for f in files if fnmatch.fnmatch(f, ".*.tmp")]
    return found


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """<repo>/../shared/data, or skip the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny in-process tensors: one thread is far faster than several spinning threads on a busy machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_small_demo(tmp: Path, n_users: int, seed: int = 0) -> Path:
    """Synthetic demo data cut to its first `n_users` users, preprocessed with the scripts; returns the dataset."""
    import numpy as np
    import pandas as pd
    p = run_script("00_make_demo.py", "--out", tmp / "raw", "--seed", str(seed))
    assert p.returncode == 0, describe(p)
    ratings_path = tmp / "raw" / "train_ratings.csv"
    ratings = pd.read_csv(ratings_path)
    keep = np.sort(ratings["user"].unique())[:n_users]
    ratings[ratings["user"].isin(keep)].to_csv(ratings_path, index=False)
    p = run_script("01_preprocess.py", "--input", tmp / "raw", "--out", tmp / "ds")
    assert p.returncode == 0, describe(p)
    return tmp / "ds"
