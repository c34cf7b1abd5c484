"""The package's stages import one way: config <- core <- jobs; analysis reads job-dir
files (fashionbn.jobs.files, fashionbn.jobs.reading) and config, never the loop."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fashionbn"
STAGES = ("config", "core", "jobs", "analysis")
# the job-dir format: what analysis may read, itself free of the loop
FORMAT = ("fashionbn.jobs.files", "fashionbn.jobs.reading", "fashionbn.jobs.untrusted")
FORMAT_MAY_IMPORT = (
    "fashionbn.config",
    "fashionbn.core.atomic",
    "fashionbn.core.records",
    *FORMAT,
)
MAY_IMPORT = {
    "config": ("fashionbn.config",),
    "core": ("fashionbn.config", "fashionbn.core"),
    "jobs": ("fashionbn.config", "fashionbn.core", "fashionbn.jobs"),
    "analysis": ("fashionbn.config", "fashionbn.analysis", *FORMAT),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def fashionbn_imports(source: str) -> list[str]:
    """Every fashionbn module a source imports, at any depth of the file."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "fashionbn":  # from fashionbn import api
                names += [f"fashionbn.{alias.name}" for alias in node.names]
            elif node.module.startswith("fashionbn."):
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("fashionbn.")]
    return names


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(module: str, imported: list[str]) -> list[str]:
    """The imports of `module` that break the stages' direction."""
    stage = module.split(".")[1] if module.count(".") >= 1 else ""
    if module in FORMAT:
        allowed = FORMAT_MAY_IMPORT
    elif stage in MAY_IMPORT:
        allowed = MAY_IMPORT[stage]
    else:  # the commands and the API sit on top of everything
        return []
    return [
        f"{module} imports {name}" for name in imported if not within(name, allowed)
    ]


def test_the_rule_itself_tells_right_from_wrong():
    assert violations("fashionbn.core.train", ["fashionbn.jobs.files"])
    assert violations("fashionbn.config.schema", ["fashionbn.core.model"])
    assert violations("fashionbn.analysis.table", ["fashionbn.core.train"])
    assert violations("fashionbn.analysis.table", ["fashionbn.jobs.job"])
    assert violations("fashionbn.jobs.files", ["fashionbn.core.train"])
    assert not violations("fashionbn.analysis.table", ["fashionbn.jobs.reading"])
    assert not violations("fashionbn.jobs.job", ["fashionbn.core.train"])
    assert not violations("fashionbn.run", ["fashionbn.jobs.job"])
    source = "def f():\n    from fashionbn import api\n    import fashionbn.core.data\n"
    assert fashionbn_imports(source) == ["fashionbn.api", "fashionbn.core.data"]


def test_stages_import_one_way():
    assert sorted(
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    ) == (sorted(STAGES))
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        broken += violations(module, fashionbn_imports(path.read_text()))
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_it_holds_and_may_import(stage):
    """Its docstring names every module of the stage and every other stage it may
    import (the config stage: that it imports nothing else)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert doc
    modules = [p.stem for p in (PACKAGE / stage).glob("*.py") if p.stem != "__init__"]
    modules += [p.parent.name for p in (PACKAGE / stage).glob("*/__init__.py")]
    unnamed = [m for m in modules if not re.search(rf"`{m}`|\\b{m}\\.py\\b", doc)]
    assert not unnamed, f"fashionbn/{stage}/__init__.py does not name {unnamed}"
    others = [p for p in MAY_IMPORT[stage] if p != f"fashionbn.{stage}"]
    assert all(p in doc for p in others), others
    if not others:
        assert "Imports nothing else from fashionbn" in doc


def test_nothing_imports_hydras_internals():
    """fashionbn and its launcher use Hydra's public API only (hydra._internal may
    change in any release)."""
    sources = [
        *PACKAGE.rglob("*.py"),
        *(PACKAGE.parent / "hydra_plugins").rglob("*.py"),
    ]
    users = [str(p) for p in sources if "hydra._internal" in p.read_text()]
    assert len(sources) > 40
    assert not users


MAX_LINES = 400  # a module longer than this does two jobs (STYLE.md)


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules: {long}"


def test_sub_packages_say_what_they_hold():
    """A package inside a stage names each of its modules in its docstring."""
    packages = [p.parent for p in PACKAGE.glob("*/*/__init__.py")]
    assert packages  # jobs/loggers at least
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        names = [p.name for p in package.glob("*.py") if p.stem != "__init__"]
        unnamed = [n for n in names if n not in (doc or "")]
        assert not unnamed, f"{package} does not name {unnamed}"


def test_aggregating_never_loads_the_loop():
    """Transitively too: `python -m fashionbn.aggregate` must not import training."""
    code = (
        "import json, sys, fashionbn.aggregate, fashionbn.analysis.plot\n"
        "names = sorted(m for m in sys.modules if m.startswith('fashionbn.'))\n"
        "print(json.dumps(names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    for module in (
        "fashionbn.core.train",
        "fashionbn.core.model",
        "fashionbn.jobs.job",
    ):
        assert module not in loaded
    assert "fashionbn.analysis.table" in loaded


def test_metric_names_are_defined_once() -> None:
    """Every list of per-epoch metrics is fashionbn.core.records' own object (not a
    copy that could drift), and each names columns metrics.csv has."""
    from fashionbn.analysis import protocol, stats
    from fashionbn.core import records
    from fashionbn.jobs.loggers import common

    assert stats.METRICS is records.SUMMARISED
    assert protocol.EVALUATED is records.EVALUATED
    assert common.SCALARS == records.METRIC_COLUMNS[1:]  # all but epoch
    columns = set(records.METRIC_COLUMNS)
    assert set(records.SUMMARISED) <= columns
    assert {f"{m}_precise" for m in records.EVALUATED} == set(records.PRECISE_COLUMNS)
    sources = [p.read_text() for p in PACKAGE.rglob("*.py")
               if p.name != "records.py"]  # fmt: skip
    # no other module spells out a list of metric names
    assert not [s for s in sources if '["test_acc", "test_loss"' in s]


# the two places a composed config enters the training stages (and is resolved once)
CONFIG_ENTRIES = {"fashionbn.jobs.job": {"run_job"},
                  "fashionbn.core.train": {"train_and_evaluate"}}  # fmt: skip


def config_takers(source: str) -> set[str]:
    """Functions of a source that take a whole config (a parameter named cfg or
    cfgs)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [a.arg for a in [*node.args.args, *node.args.kwonlyargs]]
            if "cfg" in names or "cfgs" in names:
                found.add(node.name)
    return found


def test_the_config_is_resolved_once_at_the_entries():
    """Below run_job and train_and_evaluate every function of core/ and jobs/ takes
    a RunSettings (config.settings) or a plug-in spec, never the whole config."""
    takers = {}
    for stage in ("core", "jobs"):
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            name = module_name(path)
            found = config_takers(path.read_text()) - CONFIG_ENTRIES.get(name, set())
            if found:
                takers[name] = sorted(found)
    assert not takers, f"take a whole config below the entries: {takers}"
    assert config_takers("def f(x, cfg): pass\ndef g(run): pass") == {"f"}
