"""Temperature scaling (Guo et al., 2017) and fitted sense reliabilities: a model's confidence made honest.

A model trained to separate classes says 95% when it is right 70% of the time. Dividing its logits by
a temperature T > 1 fitted on held-out data (minimum negative log-likelihood) keeps every answer and
its ranking and lowers the confidence to match how often it is right. The temperature may grow with
the row's own logit spread (`fit_spread_temperature`): one model's logits can be far larger on one
corpus than on another where it is right as often. One temperature per *input
kind* (which senses a row has: "audio", "visual", "text", "audio+visual", ...): a model's voice and
face decisions are over-confident by different amounts, and a row with one sense is answered by that
sense alone. A row with several senses instead gets fitted reliability weights (`fit_fusion`): its fused
logits plus each sense's own log-probabilities, each weighted. Both sit in the checkpoint's card
(`calibration.temperature`, `calibration.spread_power`, `calibration.fusion`); `registry.load` attaches them as a forward hook, so
every caller (app, cache, eval) sees the same calibrated output.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.cache import logits_from_probs
from models.output import ModelOutput

SENSE_FLOOR = 1e-8  # a sense's probabilities are floored here before their log (fit_fusion and the hook alike)


def _weighted_nll(scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The row-weighted mean NLL of softmax(scores) [N, C] for `targets` [N] ids (`weights` [N], None:
    every row the same): what every calibration fit below minimises."""
    loss = nn.functional.cross_entropy(scores, targets.long(), reduction="none")
    return loss.mean() if weights is None else (loss * weights).sum() / weights.sum()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """T minimising the (row-weighted) mean NLL of softmax(logits / T); logits [N, C], targets [N] ids.
    `weights` [N]: e.g. 1 / rows of the row's corpus, so every corpus counts the same. Searched on a
    log grid (0.05-20), then refined: a one-dimensional convex problem needs no optimiser state."""
    logits, targets = logits.detach().float(), targets.long()
    w = None if weights is None else weights.float()

    def nll(t: float) -> float:
        return float(_weighted_nll(logits / t, targets, w))

    grid = torch.logspace(-1.3, 1.3, 53).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.1, best * 1.1, 41).tolist()
    return round(min(fine, key=nll), 4)


SPREAD_FLOOR = 1e-3  # a row's logit spread is floored here (a row of equal logits stays as it is)
SPREAD_MIN_ROWS = 100  # fewer rows cannot tell a spread effect from noise: plain temperature scaling
SPREAD_POWERS = (-1.0, 2.0)  # a fitted power outside this range is not believed: plain temperature scaling


def logit_spread(logits: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [N, 1]: each row's standard deviation over its classes (floored at SPREAD_FLOOR)."""
    return logits.float().std(-1, keepdim=True).clamp_min(SPREAD_FLOOR)


def fit_spread_temperature(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                           steps: int = 100) -> tuple[float, float]:
    """(T, power) minimising the (row-weighted) mean NLL of softmax(logits / (T * spread ** power)), with
    spread = `logit_spread(logits)`; logits [N, C], targets [N] ids. power 0 is temperature scaling.

    Why: EmoAsst's voice logits spread twice as far on RAVDESS's dev actors as on CREMA-D's (std 9.8 vs
    5.5) while it is right as often on both (65-66%); the one temperature that fits both together left
    RAVDESS over-confident and CREMA-D under-confident (ECE 0.19 and 0.21). A temperature that grows with
    the row's own spread removes that difference (power 1.2: 0.15 and 0.06). Starts from the plain
    temperature (`fit_temperature`), then L-BFGS on (log T, power); with fewer than SPREAD_MIN_ROWS rows,
    or a power outside SPREAD_POWERS, the plain temperature and power 0."""
    logits, targets = logits.detach().float(), targets.long()
    plain = fit_temperature(logits, targets, weights)
    if len(targets) < SPREAD_MIN_ROWS:
        return plain, 0.0
    w = None if weights is None else weights.float()
    log_spread = logit_spread(logits).log()
    raw = torch.tensor([math.log(plain), 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([raw], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scaled = logits * torch.exp(-raw[0] - raw[1] * log_spread)
        loss = _weighted_nll(scaled, targets, w)
        loss.backward()
        return loss

    opt.step(closure)
    log_t, power = raw.detach().tolist()
    if not (math.isfinite(log_t) and SPREAD_POWERS[0] <= power <= SPREAD_POWERS[1]):
        return plain, 0.0
    return round(math.exp(log_t), 4), round(power, 4)


SENSES = ("audio", "visual", "text")


def input_kind(present: dict[str, bool]) -> str:
    """The row's senses joined in a fixed order, e.g. "audio+visual" ("" for none)."""
    return "+".join(m for m in SENSES if present.get(m))


def fitted_kind(kind: str, fitted: dict) -> str | None:
    """The entry of `fitted` (keyed by input kind) that serves a row of `kind`: its own, else the fitted
    kind with the most senses that are all in the row (an app clip's "audio+visual+text" is served by
    "audio+visual" when no dev row had all three), else None."""
    if kind in fitted:
        return kind
    senses = set(kind.split("+"))
    subsets = [k for k in fitted if k and set(k.split("+")) <= senses]
    return max(subsets, key=lambda k: (len(k.split("+")), k), default=None)


def row_temperatures(calibration: dict, kinds: list[str], logits: torch.Tensor) -> torch.Tensor:
    """[N, 1]: each row's temperature from a card's `calibration`: its input kind's `temperature` (one number,
    or one per input kind, a kind without its own served by `fitted_kind`; none: 1) times the row's
    `logit_spread` to that kind's `spread_power` (none: 0), for `logits` [N, C] of rows of these kinds."""
    fitted = calibration.get("temperature") or 1.0
    if not isinstance(fitted, dict):
        return torch.full((len(kinds), 1), float(fitted))
    powers = calibration.get("spread_power") or {}
    chosen = [fitted_kind(kind, fitted) for kind in kinds]
    temps = torch.tensor([[fitted.get(k, 1.0)] for k in chosen])
    power = torch.tensor([[powers.get(k, 0.0)] for k in chosen])
    return temps * logit_spread(logits).cpu() ** power


def fit_fusion(logits: torch.Tensor, senses: dict[str, torch.Tensor], targets: torch.Tensor,
               weights: torch.Tensor | None = None, steps: int = 200) -> dict[str, float]:
    """Reliability weights for a row with several senses: w_fused, w_sense >= 0 minimising the (row-weighted)
    mean NLL of softmax(w_fused * logits + sum of w_sense * senses[sense]). logits [N, C]: the model's fused
    logits; senses: each sense's own log-probabilities [N, C]; targets [N] ids.

    Why: a model's fused head can let one sense drown the others (issue 21: Foal-Net's fused answer below
    its voice alone). When face and voice carry independent evidence, adding each sense's log-probability,
    weighted by how far it can be trusted, is the product-of-experts answer; fitted on held-out rows, the
    weights are that trust, and with the senses at 0 this is temperature scaling (w_fused = 1 / T)."""
    names = sorted(senses)
    stack = torch.stack([logits.detach().float()] + [senses[m].detach().float() for m in names])  # [1+S, N, C]
    w = None if weights is None else weights.float()
    raw = torch.tensor([0.5413] + [-4.0] * len(names), requires_grad=True)  # softplus: w_fused 1, senses ~0.02
    opt = torch.optim.LBFGS([raw], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        combined = (nn.functional.softplus(raw)[:, None, None] * stack).sum(0)
        loss = _weighted_nll(combined, targets, w)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = nn.functional.softplus(raw.detach()).tolist()
    return {"fused": round(fitted[0], 4), **{m: round(v, 4) for m, v in zip(names, fitted[1:])}}


def calibrated_logits(logits: torch.Tensor, sense_logprobs: dict[str, torch.Tensor], kinds: list[str],
                      calibration: dict) -> torch.Tensor:
    """A card's `calibration` applied to logits [N, C] of rows of these input kinds: a row whose kind has
    fusion weights (`fit_fusion`) gets w_fused * logits + sum of w_sense * its senses' log-probabilities
    (`sense_logprobs`, [N, C] each); any other row is divided by its temperature (`row_temperatures`)."""
    fusion = calibration.get("fusion") or {}
    out = logits / row_temperatures(calibration, kinds, logits).to(logits)
    for i, kind in enumerate(kinds):
        chosen = fitted_kind(kind, fusion)
        if chosen is None or any(m not in sense_logprobs for m in fusion[chosen] if m != "fused"):
            continue
        w = fusion[chosen]
        out[i] = w["fused"] * logits[i] + sum(w[m] * sense_logprobs[m][i] for m in w if m != "fused")
    return out


def calibration_hook(calibration: dict):
    """A forward hook that applies a card's `calibration` (`calibrated_logits`) to every output, with the
    kinds read from the model's input (`ModelInput.present`) and the senses' log-probabilities from
    `ModelOutput.modality_probs`. The per-modality probabilities are left as they are: they show each
    sense's own decision; `raw_logits` keeps the logits before calibration."""

    def hook(_module: nn.Module, inputs, out: ModelOutput) -> ModelOutput:
        if out.logits is None:
            return out
        present = inputs[0].present
        kinds = [input_kind({m: bool(present[m][i]) for m in SENSES if m in present}) for i in range(len(out.logits))]
        senses = {m: logits_from_probs(p, SENSE_FLOOR) for m, p in out.modality_probs.items()}
        out.raw_logits = out.logits
        out.logits = calibrated_logits(out.logits, senses, kinds, calibration)
        out.probs = out.logits.softmax(-1)
        return out

    return hook
