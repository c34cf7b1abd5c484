"""Evaluation after every epoch: the test split, the validation split (when there is
one) and, with precise_bn=true, both again with precise BatchNorm statistics. Every
evaluation is in evaluation mode and changes nothing the training uses."""

import torch
import torch.nn.functional as F
from torch import nn

from fashionbn.config.settings import RunSettings
from fashionbn.core.data import FashionData
from fashionbn.core.model import has_batch_norm
from fashionbn.core.precise_bn import precise_evaluation
from fashionbn.core.records import PRECISE_COLUMNS


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Eval-mode pass over a whole split; returns (mean sample loss, accuracy)."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        logits = model(x)  # (B, 10)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def evaluate_epoch(run: RunSettings, model: nn.Module, data: FashionData) -> dict:
    """test_loss, test_acc, val_loss, val_acc (None without a validation split) and
    the *_precise columns (None unless precise_bn=true and the model has BatchNorm)."""
    batch = run.eval_batch_size
    splits = {"test": (data.test_images, data.test_labels)}
    if len(data.val_labels):
        splits["val"] = (data.val_images, data.val_labels)
    record = {"val_loss": None, "val_acc": None}
    for name, (images, labels) in splits.items():
        record[f"{name}_loss"], record[f"{name}_acc"] = evaluate(
            model, images, labels, batch
        )
    record.update(dict.fromkeys(PRECISE_COLUMNS))
    if run.precise_bn and has_batch_norm(model):
        record.update(
            precise_evaluation(
                model,
                data.train_images,
                splits,
                lambda m, x, y: evaluate(m, x, y, batch),
            )  # fmt: skip
        )
    return record
