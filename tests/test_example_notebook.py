"""examples/fashionbn.ipynb, executed on tiny data (nbclient): it must never rot."""

import json
import os

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


@pytest.mark.slow
def test_the_example_notebook_runs_and_draws_both_figures(real_data_root, tmp_path):
    notebook = nbformat.read(REPO / "examples" / "fashionbn.ipynb", as_version=4)
    sweep = tmp_path / "sweep"
    environment = {
        "FASHIONBN_EXAMPLE_EPOCHS": "2", "FASHIONBN_EXAMPLE_SEEDS": "2",
        "FASHIONBN_EXAMPLE_SWEEP": str(sweep),
        "FASHIONBN_EXAMPLE_OVERRIDES": f"data.root={real_data_root} "
        "data.train_size=1024 data.test_size=500 device=cpu threads=1",
        "PYTHONPATH": str(REPO),
    }  # fmt: skip
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]  # fmt: skip
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the two figures
    assert len(list(sweep.glob("*/metrics.csv"))) == 4
    # the last table: the gap per epoch, mean over seeds, from the runs' own files
    # (dirs named by Hydra from the sweep's overrides: ...,model=batchnorm,seed=0)
    runs = {tuple(p.parent.name.split(",")[-2:]): pd.read_csv(p)
            for p in sweep.glob("*/metrics.csv")}  # fmt: skip
    gaps = pd.DataFrame({
        seed: runs[("model=batchnorm", f"seed={seed}")]["test_acc"]
        - runs[("model=baseline", f"seed={seed}")]["test_acc"] for seed in (0, 1)
    })  # fmt: skip
    table = outputs[-1]["data"]["text/plain"].splitlines()[2:]  # epoch, mean, std
    means = [float(line.split()[1]) for line in table]
    assert means == pytest.approx(gaps.mean(axis=1).tolist(), abs=1e-6)
    json.dumps(notebook)  # still a valid notebook after execution
