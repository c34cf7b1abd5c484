"""The order a run trains its samples in: one permutation per epoch from the run's
own (CPU) shuffle generator, the same on every device, split into batches as
DataLoader(shuffle=True, drop_last=...) splits them."""

from collections.abc import Iterator

import torch


def shuffled_batches(
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield index tensors of one shuffled epoch, like DataLoader(shuffle=True,
    drop_last=drop_last): the permutation is drawn the same way either way, so
    drop_last changes which samples an epoch ends on, never the order.

    The order comes from the (CPU) `generator`, so a seed gives the same batches on
    every device; it is moved to `device` once per epoch, not once per batch.
    """
    yield from epoch_order(num_samples, batch_size, generator, device, drop_last).split(
        batch_size
    )


def epoch_order(
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> torch.Tensor:
    """One epoch's shuffled sample indices (shuffled_batches splits them into
    batches; a batched cohort stacks every run's)."""
    order = torch.randperm(num_samples, generator=generator).to(device)
    if drop_last:
        order = order[: num_samples - num_samples % batch_size]
    return order
