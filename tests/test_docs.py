"""The docs say what the code does: links resolve, and docs/extending.md's example runs
exactly as written (its files and commands taken from the page, with smaller data)."""

import json
import os
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, run_module

DOCS = sorted((REPO / "docs").glob("*.md"))
EXTENDING = REPO / "docs" / "extending.md"
SMALL = ["epochs=2", "data.train_size=640", "data.test_size=200", "device=cpu",
         "threads=1"]  # fmt: skip


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(the line before the fence, language, body) of every fenced code block."""
    found = []
    for match in re.finditer(r"(?m)^```(\w*)\n(.*?)^```", text, re.S):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((before, match.group(1), match.group(2)))
    return found


def section(text: str, heading: str) -> str:
    """The text of the `## heading` section, up to the next `## `."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def file_block(text: str, name: str) -> str:
    """The body of the block introduced by a line naming `name` in bold."""
    (body,) = [b for before, _, b in blocks(text) if f"**`{name}`**" in before]
    return body


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [REPO / "README.md", *DOCS]
    assert EXTENDING in pages
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"
            checked += 1
    assert checked >= 2  # the README links its docs pages


def test_the_shipped_groupnorm_yaml_is_the_one_the_page_shows() -> None:
    text = EXTENDING.read_text()
    shown = [b for before, lang, b in blocks(text)
             if lang == "yaml" and "groupnorm.yaml" in before]  # fmt: skip
    assert len(shown) == 1
    shipped = (REPO / "conf" / "model" / "groupnorm.yaml").read_text()
    assert yaml.safe_load(shown[0]) == yaml.safe_load(shipped)


def test_the_pages_error_line_is_the_one_a_user_gets(tmp_path: Path) -> None:
    text = EXTENDING.read_text()
    quoted = re.search(
        r"`error: (model\.norm\._target_=[^`]+)`", text.replace("\n  ", " ")
    )
    assert quoted is not None
    result = run_module(
        ["fashionbn.run", "model=groupnorm", "model.norm.num_groups=5",
         f"hydra.run.dir={tmp_path / 'run'}", *SMALL], tmp_path)  # fmt: skip
    assert result.returncode == 2  # bad input, as for every config error
    assert f"error: {quoted.group(1)}" in result.stderr
    assert not (tmp_path / "run" / "status.json").exists()


@pytest.mark.slow
def test_the_pages_own_module_runs_as_written_in_both_launchers(
    real_data_root, tmp_path
) -> None:
    """my_norms.py and my_conf/model/scalenorm.yaml from the page, its two sweep
    commands (smaller data), then the aggregate: equal numbers from both launchers,
    the user's parameter trained, diagnostics measured, the arm named by its target."""
    text = EXTENDING.read_text()
    (tmp_path / "my_norms.py").write_text(file_block(text, "my_norms.py"))
    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    yaml_path = "my_conf/model/scalenorm.yaml"
    (tmp_path / yaml_path).write_text(file_block(text, yaml_path))
    own = section(text, "Your own module: one YAML and your file")
    (commands,) = [b for _, lang, b in blocks(own) if lang == "bash"]
    runs = [shlex.split(c) for c in commands.splitlines() if "fashionbn.run" in c]
    assert len(runs) == 2 and all(r[0] == "PYTHONPATH=." for r in runs)
    sweeps = {}
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), *([before] if before else [])]
    )  # the page's PYTHONPATH=. (cwd is tmp_path), for run_module's children
    try:
        for args in runs:
            assert args[1:3] == ["python", "-m"]
            name = "batched" if "hydra/launcher=batched" in args else "basic"
            sweeps[name] = tmp_path / name
            result = run_module(
                [*args[3:], *SMALL, f"data.root={real_data_root}",
                 f"hydra.sweep.dir={sweeps[name]}"], tmp_path)  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
        assert "a cohort of 3 runs" in result.stderr  # scalenorm's, in a cohort
        diag = run_module(
            [*runs[0][3:], *SMALL, f"data.root={real_data_root}", "seed=0",
             "model=scalenorm", "diagnostics=on",
             f"hydra.sweep.dir={tmp_path / 'diag'}"], tmp_path)  # fmt: skip
        assert diag.returncode == 0, diag.stderr[-3000:]
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    names = sorted(p.name for p in sweeps["basic"].iterdir() if p.is_dir())
    assert len(names) == 9 and sum("model=scalenorm" in n for n in names) == 3
    for name in names:
        basic = pd.read_csv(sweeps["basic"] / name / "metrics.csv")
        batched = pd.read_csv(sweeps["batched"] / name / "metrics.csv")
        assert len(basic) == 2
        for column in ("train_loss", "test_loss", "test_acc"):
            assert (basic[column] - batched[column]).abs().max() < 1e-4, (name, column)
    (diag_dir,) = [p for p in (tmp_path / "diag").iterdir() if p.is_dir()]
    diagnostics = pd.read_csv(diag_dir / "diagnostics.csv")
    assert {"act_in_std", "grad_norm", "ics_l2", "loss_range"} <= set(
        diagnostics["quantity"]
    )
    assert diagnostics["value"].notna().all()
    report = run_module(["fashionbn.aggregate", str(sweeps["basic"]), "--out",
                         str(tmp_path / "report")], tmp_path)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    described = (tmp_path / "report" / "report.md").read_text()
    assert "model.norm._target_=my_norms.ScaleNorm, model.norm.eps=1e-05" in described


def page_runs(text: str, tmp_path: Path) -> tuple[list[list[str]], dict]:
    """A page section's two `PYTHONPATH=. python -m fashionbn.run` commands, split,
    and the environment that makes `.` the test's dir."""
    (commands,) = [b for _, lang, b in blocks(text) if lang == "bash"]
    runs = [shlex.split(c) for c in commands.splitlines() if "fashionbn.run" in c]
    assert len(runs) == 2 and all(r[0] == "PYTHONPATH=." for r in runs)
    return runs, {**os.environ, "PYTHONPATH": str(tmp_path)}


def run_both(runs: list[list[str]], more: list[str], tmp_path: Path, env: dict):
    """Run each command (`more` overrides added) into tmp_path/basic or /batched;
    ({launcher: sweep dir}, the last result)."""
    sweeps = {}
    for args in runs:
        name = "batched" if "hydra/launcher=batched" in args else "basic"
        sweeps[name] = tmp_path / name
        result = run_module([*args[3:], *more, f"hydra.sweep.dir={sweeps[name]}"],
                            tmp_path, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    return sweeps, result


@pytest.mark.slow
def test_the_pages_own_model_runs_as_written_in_both_launchers(
    real_data_root, tmp_path
) -> None:
    """my_models.py and its two YAMLs from the page, its two sweep commands
    (smaller data): the user's factory built with the data's shape and its args,
    both models in cohorts of the batched launcher, equal numbers to the basic
    launcher's, BatchNorm's precise statistics and diagnostics on the user's net."""
    text = section(EXTENDING.read_text(), "Your own model: one YAML and your file")
    (tmp_path / "my_models.py").write_text(file_block(text, "my_models.py"))
    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    yamls = [b for _, lang, b in blocks(text) if lang == "yaml"]
    assert len(yamls) == 2
    for body in yamls:
        (conf / f"{yaml.safe_load(body)['name']}.yaml").write_text(body)
    runs, env = page_runs(text, tmp_path)
    sweeps, result = run_both(runs, [*SMALL, f"data.root={real_data_root}"], tmp_path,
                              env)  # fmt: skip
    assert result.stderr.count("a cohort of 3 runs") == 2  # each model's, stacked
    names = sorted(p.name for p in sweeps["basic"].iterdir() if p.is_dir())
    assert len(names) == 6
    for name in names:
        basic = pd.read_csv(sweeps["basic"] / name / "metrics.csv")
        batched = pd.read_csv(sweeps["batched"] / name / "metrics.csv")
        for column in ("train_loss", "test_loss", "test_acc"):
            assert (basic[column] - batched[column]).abs().max() < 1e-3, (name, column)
    assert runs[0][3:7] == ["fashionbn.run", "-m", "--config-dir", "my_conf"]
    extra = run_module(
        [*runs[0][3:7], "model=deep_batchnorm", "seed=0", "diagnostics=on",
         "precise_bn=true", "data.val_size=100", *SMALL, f"data.root={real_data_root}",
         f"hydra.sweep.dir={tmp_path / 'diag'}"], tmp_path, env=env)  # fmt: skip
    assert extra.returncode == 0, extra.stderr[-3000:]
    (diag_dir,) = [p for p in (tmp_path / "diag").iterdir() if p.is_dir()]
    diagnostics = pd.read_csv(diag_dir / "diagnostics.csv")
    assert set(diagnostics["layer"].astype(str)) == {"1", "2", "3", "all"}  # depth 3
    metrics = pd.read_csv(diag_dir / "metrics.csv")
    assert metrics["test_acc_precise"].notna().all()
    status = json.loads((diag_dir / "status.json").read_text())
    assert status["config"]["model"]["_target_"] == "my_models.deep_mlp"
    assert status["config"]["model"]["args"] == {"depth": 3}


@pytest.mark.slow
def test_the_pages_own_data_runs_as_written_in_both_launchers(tmp_path) -> None:
    """my_data.py and my_conf/data/noisy_digits.yaml from the page, its two sweep
    commands (2 epochs): the source's args merged with digits', equal numbers from
    both launchers, the data's digest that of the noisy tensors."""
    text = section(EXTENDING.read_text(), "Your own data: one YAML (and your file)")
    (tmp_path / "my_data.py").write_text(file_block(text, "my_data.py"))
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    path = "my_conf/data/noisy_digits.yaml"
    (tmp_path / path).write_text(file_block(text, path))
    runs, env = page_runs(text, tmp_path)
    more = ["epochs=2", "device=cpu", "threads=1", "optim.lr=0.1"]
    sweeps, _ = run_both(runs, more, tmp_path, env)
    names = sorted(p.name for p in sweeps["basic"].iterdir() if p.is_dir())
    assert len(names) == 6
    for name in names:
        basic = pd.read_csv(sweeps["basic"] / name / "metrics.csv")
        batched = pd.read_csv(sweeps["batched"] / name / "metrics.csv")
        assert basic.drop(columns="seconds").equals(batched.drop(columns="seconds"))
    status = json.loads((sweeps["basic"] / names[0] / "status.json").read_text())
    data = status["config"]["data"]
    assert data["_target_"] == "my_data.noisy_digits"
    assert data["args"] == {"sigma": 0.3, "test_size": 360}  # merged with digits'
    clean = run_module(["fashionbn.run", "data=digits", "epochs=1", "threads=1",
                        f"hydra.run.dir={tmp_path / 'clean'}"], tmp_path)  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-3000:]
    other = json.loads((tmp_path / "clean" / "status.json").read_text())
    assert other["data_sha256"] != status["data_sha256"]  # noise: other data


# --- the commands the pages show ---------------------------------------------------

PAGES = [REPO / "README.md", *DOCS]
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|…|SWEEP_DIR|\$")


def shell_commands(text: str) -> list[str]:
    """Every command line that runs fashionbn or make: each line of a bash block
    (continuations joined, comments cut), and each `$ ` line of a console
    transcript (a block of a command and its output)."""
    found = []
    for _, lang, body in blocks(text):
        lines = body.replace("\\\n", " ").splitlines()
        if lang not in ("bash", "sh"):
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        for line in lines:
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("python") or words[:1] == ["make"]:
                found.append(" ".join(shlex.quote(w) for w in words))
    return found


def documented(module: str) -> list[list[str]]:
    """The arguments of every `python -m <module>` command of the pages that names
    no placeholder (<dir>, ..., $VAR)."""
    commands = []
    for page in PAGES:
        for command in shell_commands(page.read_text()):
            words = shlex.split(command)
            if words[1:3] != ["-m", module] or PLACEHOLDER.search(command):
                continue
            commands.append(words[3:])
    return commands


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """model=a,b seed=range(0,3) -> model=a seed=0: one job of the sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        f"{o.input_line.split('=', 1)[0]}={next(iter(o.sweep_string_iterator()))}"
        if o.is_sweep_override()
        else o.input_line
        for o in parsed
    ]


LAUNCHERS = {p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("*.yaml")}
LAUNCHERS |= {"basic", "batched", "batched_slurm", "joblib", "submitit_local",
              "submitit_slurm"}  # fmt: skip


def test_the_pages_show_commands_of_every_kind() -> None:
    assert len(documented("fashionbn.run")) >= 20
    assert len(documented("fashionbn.aggregate")) >= 5
    assert len(documented("fashionbn.bench")) >= 5
    assert first_of_each_sweep(["model=a,b", "seed=range(3,5)", "epochs=2"]) == [
        "model=a", "seed=3", "epochs=2"]  # fmt: skip


def test_every_documented_run_command_composes_and_validates() -> None:
    """Each `python -m fashionbn.run ...` of the README and docs/, one job of its
    sweep: its config groups, keys and values exist and pass validation (a command
    shown to produce an error is marked so on its line: `# error:`)."""
    from fashionbn.api import compose_config
    from fashionbn.config.validation import check_config

    problems = []
    for arguments in documented("fashionbn.run"):
        overrides = [a for a in arguments if "=" in a and not a.startswith("-")]
        launcher = [a.split("=", 1)[1] for a in overrides
                    if a.startswith("hydra/launcher=")]  # fmt: skip
        if launcher and launcher[0] not in LAUNCHERS:
            problems.append(f"{arguments}: no launcher {launcher[0]}")
        overrides = [a for a in overrides if not a.startswith(("hydra.", "hydra/"))]
        try:
            check_config(compose_config(first_of_each_sweep(overrides)))
        except Exception as err:  # noqa: BLE001 - every failure is listed
            problems.append(f"{' '.join(arguments)}: {type(err).__name__}: {err}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", ["fashionbn.aggregate", "fashionbn.bench"])
def test_every_documented_option_exists(module) -> None:
    import importlib

    parser = importlib.import_module(module).make_parser()
    problems = []
    for arguments in documented(module):
        try:
            parser.parse_args(arguments)
        except SystemExit:
            problems.append(" ".join(arguments))
    assert not problems, "\n".join(problems)


def test_every_documented_make_target_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([\w-]+):", makefile))
    shown = [shlex.split(c)[1] for page in PAGES
             for c in shell_commands(page.read_text())
             if c.startswith("make ") and len(shlex.split(c)) > 1]  # fmt: skip
    assert len(shown) >= 3
    missing = [t for t in shown if "=" not in t and t not in targets]
    assert not missing


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_anchor_a_page_links_to_exists() -> None:
    assert slug("Training a whole sweep at once: `hydra/launcher=batched`") == (
        "training-a-whole-sweep-at-once-hydralauncherbatched"
    )
    checked = 0
    for page in PAGES:
        for target, anchor in re.findall(
            r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()
        ):
            linked = (page.parent / target) if target else page
            text = re.sub(r"(?ms)^```.*?^```", "", linked.read_text())
            anchors = {slug(h) for h in re.findall(r"(?m)^#+ (.*)$", text)}
            assert anchor in anchors, f"{page.name}: {target}#{anchor}"
            checked += 1
    assert checked >= 3


def test_the_development_page_names_every_test_file() -> None:
    page = (REPO / "docs" / "development.md").read_text()
    files = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert len(files) > 20
    assert not [f for f in files if f"`{f}`" not in page]
    named = set(re.findall(r"`(test_\w+\.py)`", page))
    assert not named - set(files)  # no file the page names is gone
