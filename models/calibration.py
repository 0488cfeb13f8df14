"""Temperature scaling (Guo et al., 2017): one number per model that makes its confidence honest.

A model trained to separate classes says 95% when it is right 70% of the time. Dividing its logits by
a temperature T > 1 fitted on held-out data (minimum negative log-likelihood) keeps every answer and
its ranking and lowers the confidence to match how often it is right. One temperature per *input
kind* (which senses a row has: "audio", "visual", "text", "audio+visual", ...): a model's voice and
face decisions are over-confident by different amounts, and a row with one sense is answered by that
sense alone. The temperatures sit in the checkpoint's card; `registry.load` attaches them as a
forward hook, so every caller (app, cache, eval) sees the same calibrated output.
"""
from __future__ import annotations

import torch
from torch import nn

from models.output import ModelOutput


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """T minimising the (row-weighted) mean NLL of softmax(logits / T); logits [N, C], targets [N] ids.
    `weights` [N]: e.g. 1 / rows of the row's corpus, so every corpus counts the same. Searched on a
    log grid (0.05-20), then refined: a one-dimensional convex problem needs no optimiser state."""
    logits, targets = logits.detach().float(), targets.long()
    w = torch.ones(len(targets)) if weights is None else weights.float()

    def nll(t: float) -> float:
        loss = nn.functional.cross_entropy(logits / t, targets, reduction="none")
        return float((loss * w).sum() / w.sum())

    grid = torch.logspace(-1.3, 1.3, 53).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.1, best * 1.1, 41).tolist()
    return round(min(fine, key=nll), 4)


SENSES = ("audio", "visual", "text")


def input_kind(present: dict[str, bool]) -> str:
    """The row's senses joined in a fixed order, e.g. "audio+visual" ("" for none)."""
    return "+".join(m for m in SENSES if present.get(m))


def row_temperatures(fitted: float | dict[str, float], kinds: list[str]) -> torch.Tensor:
    """[N, 1]: each row's temperature from a card's `fitted` (one number, or one per input kind; a kind
    without one: 1), for rows of these input kinds."""
    if not isinstance(fitted, dict):
        return torch.full((len(kinds), 1), float(fitted))
    return torch.tensor([[fitted.get(kind, 1.0)] for kind in kinds])


def temperature_hook(temperature: float | dict[str, float]):
    """A forward hook that divides each row's logits (and rescales its probabilities) by the temperature
    of its input kind (`row_temperatures`; the kinds are read from the model's input,
    `ModelInput.present`). Per-modality probabilities are left as they are: they show each sense's own
    decision."""

    def hook(_module: nn.Module, inputs, out: ModelOutput) -> ModelOutput:
        if out.logits is None:
            return out
        present = inputs[0].present
        kinds = [input_kind({m: bool(present[m][i]) for m in SENSES if m in present}) for i in range(len(out.logits))]
        out.logits = out.logits / row_temperatures(temperature, kinds).to(out.logits)
        out.probs = out.logits.softmax(-1)
        return out

    return hook
