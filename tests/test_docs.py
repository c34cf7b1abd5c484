"""The docs say what the code does: links resolve, and docs/extending.md's example runs
exactly as written (its files and commands taken from the page, with smaller data)."""

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
    (commands,) = [b for _, lang, b in blocks(text) if lang == "bash"]
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
