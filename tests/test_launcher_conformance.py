"""hydra/launcher=batched is a conformant Hydra launcher: Hydra's own launcher test
suites, run the way Hydra's launcher plugins run them (apps that are not fashionbn:
the batched launcher then behaves like the basic one)."""

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.fashionbn_batched_launcher.batched_launcher import BatchedLauncher


@pytest.fixture(autouse=True)
def hydras_own_version_base():
    """The suites' apps declare no version_base and expect Hydra's defaults for that
    (jobs change dir); fashionbn's other tests compose with version_base="1.3",
    which Hydra keeps process-wide."""
    from hydra import version

    before = version.getbase()
    version.VersionBase.instance().version_base = version._UNSPECIFIED_
    yield
    version.VersionBase.instance().version_base = before


def test_the_launcher_is_discovered_as_a_hydra_plugin() -> None:
    assert BatchedLauncher.__name__ in [
        x.__name__ for x in Plugins.instance().discover(Launcher)
    ]


@pytest.mark.parametrize("launcher_name, overrides", [("batched", [])])
class TestBatchedLauncher(LauncherTestSuite):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=batched"])],
)
class TestBatchedLauncherIntegration(IntegrationTestSuite):
    pass
