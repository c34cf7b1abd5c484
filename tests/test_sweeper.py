"""hydra/sweeper=fashionbn (the default): Hydra's basic sweeper with the sweep's
jobs composed once per config-group choice under any launcher — the same jobs, in
the same order, with the same configs as Hydra composes them."""

import difflib
import pickle
from pathlib import Path

import pytest
from hydra._internal.callbacks import Callbacks  # (tests may read Hydra's internals)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from fashionbn.jobs.composing import ComposeOnce
from fashionbn.jobs.files import read_metrics
from hydra_plugins.fashionbn_sweeper.sweeper import FashionbnSweeper
from tests.conftest import run_module, without_seconds


def sweep_with(arguments: list[str], tmp_path: Path, *settings: str):
    """Run a FashionbnSweeper over `arguments` with Hydra's basic launcher, its task
    recording each job's config: (the jobs' overrides and configs as the task got
    them, the context's loader, Hydra's own loader, the master config)."""
    loader = GlobalHydra.instance().config_loader()
    hydra_args = [f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/launcher=basic",
                  "hydra.job_logging.root.handlers=[]", *settings]  # fmt: skip
    master = loader.load_configuration("config", [*arguments, *hydra_args],
                                       RunMode.MULTIRUN)  # fmt: skip
    context = HydraContext(config_loader=loader, callbacks=Callbacks())
    launched = []

    def task(cfg):
        launched.append(
            (list(HydraConfig.get().overrides.task), OmegaConf.to_yaml(cfg))
        )

    sweeper = FashionbnSweeper(**{k: v for k, v in master.hydra.sweeper.items()
                                  if k != "_target_"})  # fmt: skip
    setup_globals()
    sweeper.setup(hydra_context=context, task_function=task, config=master)
    sweeper.sweep(arguments=arguments)
    return launched, context.config_loader, loader, master


def without_hydra(cfg) -> str:
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    return OmegaConf.to_yaml(cfg)


def test_the_default_sweeper_composes_each_group_choice_once(hydra_conf, tmp_path):
    arguments = ["model=baseline,batchnorm", "seed=0,1,2", "optim.lr=0.1,0.01"]
    launched, used, hydras, master = sweep_with(arguments, tmp_path)
    assert isinstance(used, ComposeOnce)
    assert used.composed == 2  # baseline, batchnorm; the other 22 jobs derived
    assert used.derived == 10 + 12  # (the check's 10, then the launcher's 12)
    assert len(launched) == 12
    assert [o for o, _ in launched][:2] == [
        ["model=baseline", "seed=0", "optim.lr=0.1"],
        ["model=baseline", "seed=0", "optim.lr=0.01"],
    ]  # Hydra's basic sweeper's order
    for overrides, yaml in launched:
        assert yaml == without_hydra(hydras.load_sweep_config(master, overrides))
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()
    assert not used.made  # nothing kept for a launcher that does not take


def test_compose_once_false_is_hydras_own_composition(hydra_conf, tmp_path):
    launched, used, hydras, _ = sweep_with(
        ["seed=0,1"], tmp_path, "hydra.sweeper.compose_once=false"
    )
    assert used is hydras and len(launched) == 2


def test_presets_sweep_params_are_the_basic_sweepers(hydra_conf, tmp_path):
    launched, used, _, _ = sweep_with(["experiment=seed_repro"], tmp_path)
    assert len(launched) == 10 and used.composed == 2  # (2 models x 5 seeds)
    assert launched[-1][0] == ["model=batchnorm", "seed=4", "experiment=seed_repro"]


def test_a_pickled_compose_once_is_hydras_loader_in_an_empty_one(hydra_conf, tmp_path):
    """joblib and SLURM launchers send the context to their workers (pickled for
    real by the local_parallel sweep below: Hydra's own loader cannot be pickled
    here once another test has had Hydra scan its plug-ins again)."""
    _, used, hydras, master = sweep_with(["seed=0,1"], tmp_path)
    assert used.bases and used.composed == 1
    make, arguments = used.__reduce__()
    assert pickle.loads(pickle.dumps(make)) is ComposeOnce
    assert arguments == (hydras,)
    copy = make(*arguments)
    assert isinstance(copy, ComposeOnce) and not copy.bases and not copy.made
    job = ["seed=1"]
    ours = OmegaConf.to_yaml(copy.load_sweep_config(master, job))
    assert ours == OmegaConf.to_yaml(hydras.load_sweep_config(master, job))
    assert copy.composed == 1  # its own first job


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_the_default_sweeper_writes_hydras_job_dirs(launcher, real_data_root, tmp_path):
    """The same dirs, `.hydra/` files (but for the sweeper's own lines) and numbers
    as Hydra's basic sweeper."""
    sweeps = {}
    for sweeper in ("fashionbn", "basic"):
        result = run_module(
            ["fashionbn.run", "-m", f"hydra/sweeper={sweeper}",
             f"hydra/launcher={launcher}", "model=baseline,batchnorm", "seed=0,1",
             "epochs=1", "threads=1", "data.train_size=640", "data.test_size=200",
             f"data.root={real_data_root}", f"hydra.sweep.dir={tmp_path / sweeper}"],
            tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        sweeps[sweeper] = tmp_path / sweeper
    ours, hydras = sweeps["fashionbn"], sweeps["basic"]
    names = sorted(p.name for p in ours.iterdir() if p.is_dir())
    assert len(names) == 4 and names == sorted(p.name for p in hydras.iterdir()
                                               if p.is_dir())  # fmt: skip
    for name in names:
        for file in ("config.yaml", "overrides.yaml"):
            assert (ours / name / ".hydra" / file).read_bytes() == (
                hydras / name / ".hydra" / file
            ).read_bytes()
        texts = []
        for sweep, sweeper in ((hydras, "basic"), (ours, "fashionbn")):
            text = (sweep / name / ".hydra" / "hydra.yaml").read_text()
            text = text.replace(str(sweep), "SWEEP")  # the dir, the command line
            texts.append(
                text.replace(f"hydra/sweeper={sweeper}", "hydra/sweeper=X").replace(
                    f"hydra/sweeper: {sweeper}", "hydra/sweeper: X"
                )
            )
        changed = [line for line in difflib.unified_diff(
            *(t.splitlines() for t in texts), n=0, lineterm=""
        ) if line[:1] in "+-" and line[:3] not in ("+++", "---")]  # fmt: skip
        assert changed == [  # the sweeper's own lines, nothing else
            "-    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
            "+    _target_: hydra_plugins.fashionbn_sweeper.sweeper.FashionbnSweeper",
            "+    compose_once: true",
        ]
        assert without_seconds(read_metrics(ours / name)) == without_seconds(
            read_metrics(hydras / name)
        )


@pytest.mark.parametrize(
    "setting, key",
    [
        (["hydra/launcher=batched", "hydra.launcher.max_cohort=???"],
         "hydra.launcher.max_cohort"),
        (["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=???"],
         "hydra.launcher.n_jobs"),
    ],
)  # fmt: skip
def test_a_launcher_setting_left_missing_is_one_line(setting, key, tmp_path):
    """A launcher is made from its settings before any job: a value left missing
    (???) is one line naming it, not OmegaConf's traceback."""
    result = run_module(
        ["fashionbn.run", "-m", *setting, "seed=0", "epochs=1",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{key}=???: give it a value\n"), result.stderr
    assert not (tmp_path / "sweep").exists()
