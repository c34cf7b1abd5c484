"""What a Hydra launcher and a fashionbn job agree on, with nothing else loaded:
`JobFailed` (a job's one-line failure, printed by Hydra as it is) and
`deferred_jobs` (hydra/launcher=batched sets its jobs up inside it, and a fashionbn
job there returns a fashionbn.jobs.cohort PendingJob instead of training: the
launcher then trains them in cohorts). Outside that block a job trains as under any
other launcher."""

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

from hydra.errors import CompactHydraException

# inside deferred_jobs: what the sweep's jobs found out once for all (by question)
_deferring: ContextVar[Optional[dict]] = ContextVar(
    "fashionbn_deferring_jobs", default=None
)


class JobFailed(CompactHydraException):
    """A job of a sweep failed with a FashionbnError; Hydra prints just this line."""


@contextmanager
def deferred_jobs() -> Iterator[None]:
    """Within the block, fashionbn jobs return what they would train (a PendingJob)."""
    token = _deferring.set({})
    try:
        yield
    finally:
        _deferring.reset(token)


def deferring() -> bool:
    """Whether a job started now is to be trained later, in a cohort."""
    return _deferring.get() is not None


def sweep_memo() -> dict:
    """Answers the deferred jobs of one sweep share (e.g. whether a model can be
    stacked): one dict per deferred_jobs block, a fresh one outside."""
    memo = _deferring.get()
    return {} if memo is None else memo
