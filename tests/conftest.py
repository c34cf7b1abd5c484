"""Shared fixtures: the composed config, the real dataset, tiny generated IDX files."""

import gzip
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import fashionbn.core.train
from fashionbn.api import compose_config  # noqa: F401 - the tests' composer
from fashionbn.config import register_configs
from fashionbn.config.settings import run_identity
from fashionbn.core.data import prepare_from_system_dir, raw_dir
from fashionbn.jobs.files import write_diagnostics, write_metrics, write_status
from fashionbn.jobs.job import run_job

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# where the real FashionMNIST .gz files are (Debian's package; elsewhere, e.g. a GPU
# machine, FASHIONBN_TEST_SYSTEM_DIR points at a copy)
SYSTEM_DIR = Path(
    os.environ.get("FASHIONBN_TEST_SYSTEM_DIR", "/usr/share/datasets/fashion-mnist")
)

register_configs()


@pytest.fixture
def hydra_conf():
    """Hydra initialised with the project's conf/ (its global state, for a test)."""
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as a gzipped IDX file, the format FashionMNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_tiny_system_dir(directory: Path, n_train: int = 96, n_test: int = 40) -> dict:
    """Four tiny IDX .gz files named like Debian's; returns the arrays written."""
    rng = np.random.default_rng(1234)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :3] = [
        0,
        255,
        128,
    ]  # pin both ends of the range
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx_gz(directory / f"{name}.gz", array)
    return arrays


@pytest.fixture
def tiny_system_dir(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path / "system", make_tiny_system_dir(tmp_path / "system")


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data.root with the real FashionMNIST: prepared from the Debian package's .gz
    files (what `make setup` installs), or else the repo's own prepared data/."""
    if (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file():
        root = tmp_path_factory.mktemp("real_data")
        assert prepare_from_system_dir(root, SYSTEM_DIR)
        return root
    if (raw_dir(REPO / "data") / "train-images-idx3-ubyte").is_file():
        return REPO / "data"
    pytest.fail(
        f"real FashionMNIST missing in {SYSTEM_DIR} and data/: run `make setup`"
    )


@pytest.fixture
def small_real_overrides(real_data_root: Path) -> list[str]:
    """Shrink the default config for speed: 1 epoch, data subsets, cpu, real data."""
    return [
        f"data.root={real_data_root}",
        "data.train_size=2048",
        "data.test_size=1000",
        "epochs=1",
        "device=cpu",
    ]


@pytest.fixture
def small_real_cfg(small_real_overrides: list[str]):
    return compose_config(small_real_overrides)


def run_module(args: list[str], cwd: Path, timeout: int = 600, env=None):
    """Run `python -m <module> ...` as a real subprocess (`env`: its environment,
    default this process's)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def plain_start(cfg) -> tuple:
    """What a plain PyTorch loop of the protocol starts from, without
    fashionbn.core.train:
    python, numpy and torch seeded, the shuffle generator, the model and
    torch.optim.SGD."""
    import random

    import torch

    from fashionbn.core.model import build_model

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.model)
    return generator, model, torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)


def without_seconds(records: list[dict]) -> list[dict]:
    """Metric records minus `seconds`, the one column allowed to differ between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


CPU_2_THREADS = [{"device": "cpu", "torch_threads": 2, "torch": "test"}]


def make_job_dir(
    job_dir: Path,
    overrides: list[str],
    accuracy: list[float],
    status: str = "complete",
    execution: list[dict] = CPU_2_THREADS,
    val_accuracy: Optional[list[float]] = None,
    diagnostics: Optional[list[dict]] = None,
    columns: Optional[dict[str, list]] = None,
) -> Path:
    """A job dir as fashionbn.run leaves it: .hydra/ from the real config composed
    with `overrides`, status.json with its identity, and a metrics.csv whose test_acc
    per epoch is `accuracy` (the other metrics derived from it) and val_acc
    `val_accuracy` (empty without). `epochs` is len(accuracy) unless `overrides` set
    it. `columns` sets any other metrics.csv column per epoch (e.g. train_acc,
    test_acc_precise)."""
    if not any(o.startswith("epochs=") for o in overrides):
        overrides = [*overrides, f"epochs={len(accuracy)}"]
    cfg = compose_config(overrides)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    val = val_accuracy or [None] * len(accuracy)
    rows = [
        {"epoch": e, "train_loss": 2.0 - a, "train_acc": a - 0.05,
         "test_loss": 1.5 - a, "test_acc": a, "seconds": 0.5,
         "val_loss": None if v is None else 1.5 - v, "val_acc": v}
        for e, (a, v) in enumerate(zip(accuracy, val), start=1)
    ]  # fmt: skip
    for column, values in (columns or {}).items():
        for row, value in zip(rows, values):
            row[column] = value
    digests = {"metrics_sha256": write_metrics(rows, job_dir)}
    if diagnostics is not None:
        digests["diagnostics_sha256"] = write_diagnostics(diagnostics, job_dir)
    write_status(
        job_dir, status, run_identity(cfg), len(rows), execution, **digests
    )  # fmt: skip
    return job_dir


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 300 KB file system, to fill up (needs root; skipped otherwise)."""
    path = tmp_path / "tmpfs"
    if not _mount_tmpfs(path, "size=300k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A real read-only file system (root can write anywhere else; skipped if no
    mount is possible)."""
    path = tmp_path / "read_only"
    if not _mount_tmpfs(path, "ro,size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def killed_after(monkeypatch, epochs: int) -> None:
    """Make training die like a kill (not an exception the job handles) once
    `epochs` epochs are finished."""
    real, calls = fashionbn.core.train.train_one_epoch, []

    def train_then_die(*args, **kwargs):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fashionbn.core.train, "train_one_epoch", train_then_die)


def kill_run(cfg, job_dir: Path, monkeypatch, epochs: int) -> None:
    with monkeypatch.context() as patch:
        killed_after(patch, epochs)
        with pytest.raises(KeyboardInterrupt):
            run_job(cfg, job_dir)


# Student t quantiles 0.975 by degrees of freedom, from a printed table (not scipy,
# which fashionbn's statistics use): what every hand-computed interval here uses
T_975 = {1: 12.706204736174703, 2: 4.302652729911275, 16: 2.119905299221,
         17: 2.109815577833}  # fmt: skip


def hand_t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high) of the 95 % t-interval of `values`, by hand: the mean, the
    sample std (ddof=1) and T_975."""
    n = len(values)
    mean = float(np.mean(values))
    half = T_975[n - 1] * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def make_job(sweep: Path, overrides: list[str], accuracy: list[float], **kw) -> Path:
    """A hand-made job dir named as Hydra names it, from `overrides` (make_job_dir)."""
    return make_job_dir(sweep / ",".join(overrides), overrides, accuracy, **kw)


def report_of(directory: Path) -> str:
    """The aggregate's report.md in `directory`."""
    return (directory / "report.md").read_text()


def saved_epochs(
    root: Path,
    pattern: str,
    count: int,
    epochs: int,
    process: subprocess.Popen,
    timeout: float = 300,
) -> list[Path]:
    """The job dirs under `root` matching `pattern` whose metrics.csv holds at least
    `epochs` epochs, once `count` of them do — or those there are when `process`
    ends or `timeout` seconds pass (the caller asserts the count)."""
    deadline = time.time() + timeout
    while True:
        found = root.glob(f"{pattern}/metrics.csv")  # a header, then one line an epoch
        saved = [p.parent for p in found if len(p.read_text().splitlines()) > epochs]
        if len(saved) >= count or process.poll() is not None or time.time() > deadline:
            return saved
        time.sleep(0.1)
