"""The fitted per-profile adapter (models/adapter.py) and how a rebuild judges it (cachebuild.build)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emoweb.services import cachebuild
from models.adapter import ProfileAdapter, fit_adapter
from models.cache import FewShotCache, no_flip_alpha

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def shifted_speaker(per_class: int, seed: int = 0, shift: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One speaker whose voice the model hears as sad: base logits favour the true label by 2.5 (noise std
    1.5), and every clip's "sadness" logit is `shift` higher. Keys are weakly clustered by label in 64-d.
    Returns logits [N, 7], keys [N, 64], label indices [N]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(LABELS)).repeat_interleave(per_class)
    logits = 1.5 * torch.randn(len(y), len(LABELS), generator=g)
    logits[torch.arange(len(y)), y] += 2.5
    logits[:, LABELS.index("sadness")] += shift
    centres = F.normalize(torch.randn(len(LABELS), 64, generator=g), dim=1)
    keys = centres[y] + 0.5 * torch.randn(len(y), 64, generator=g)
    return logits, keys, y


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def test_the_adapter_corrects_a_per_speaker_shift_on_clips_it_was_not_fitted_on() -> None:
    logits, keys, y = shifted_speaker(per_class=16)
    shots = torch.cat([torch.nonzero(y == c).flatten()[:4] for c in range(len(LABELS))])  # K = 4 per label
    rest = torch.tensor([i for i in range(len(y)) if i not in set(shots.tolist())])
    adapter, held = fit_adapter(logits[shots], y[shots], keys[shots], "audio")
    before, after = accuracy(logits[rest], y[rest]), accuracy(adapter.logits(logits[rest], {"audio": keys[rest]}), y[rest])
    assert before < 0.5, "the shift must make the model alone mostly wrong, or the test shows nothing"
    assert after > before + 0.3
    assert adapter.bias[LABELS.index("sadness")] < adapter.bias.mean() - 1.0  # it learnt the shift, as a bias
    assert accuracy(held, y[shots]) > accuracy(logits[shots], y[shots]) + 0.2  # and the held-out judgement sees it
    # the same through a rebuild: judged on the 28 labelled clips, switched on, and said so
    data = cachebuild.assemble_arrays([LABELS[int(y[i])] for i in shots], {"audio": keys[shots]}, logits[shots])
    built = cachebuild.build("emoasst", data, LABELS, tune=True)
    assert built.hyper["method"] == "adapter" and built.hyper["active"] and built.cache.alpha == 0.0
    assert built.metrics["after"] > built.metrics["before"]
    outcome = cachebuild.outcome(built.hyper, built.metrics)
    assert outcome.startswith("fitted adapter on: +") and "your 28 labelled clips" in outcome
    scored = built.cache.logits(logits[rest], {"audio": keys[rest]})
    assert accuracy(scored, y[rest]) == pytest.approx(after)


def test_the_adapter_stays_off_when_it_would_lower_held_out_accuracy_and_says_so() -> None:
    """Labels that neither the model nor the keys follow (a caregiver labelling at random, in equal numbers):
    any fit of them is noise, and judged without each clip (whose label is then one clip short) it gets
    fewer right than the model alone. The rebuild keeps it off."""
    g = torch.Generator().manual_seed(5)
    n = 30
    labels = [LABELS[i % 3] for i in range(n)]
    logits = 0.3 * torch.randn(n, len(LABELS), generator=g)
    logits[:, :3] += 1.0  # the model answers one of the three labels, at random
    keys = torch.ones(n, 64)  # all clips look alike: no cache can tell them apart either
    data = cachebuild.assemble_arrays(labels, {"audio": keys}, logits)
    built = cachebuild.build("emoasst", data, LABELS, tune=True)
    judged = built.metrics["adapter"]
    assert judged["after"] < judged["before"], judged
    assert built.cache.adapter is None and built.hyper["method"] != "adapter" and not built.hyper["active"]
    outcome = cachebuild.outcome(built.hyper, built.metrics)
    assert outcome.startswith("kept off: it would not make answers better") and "a fitted adapter: " in outcome
    assert built.cache.logits(logits, {"audio": keys}).argmax(1).tolist() == logits.argmax(1).tolist()  # the model alone


def test_one_clip_per_label_fits_no_adapter_and_flips_no_confident_answer() -> None:
    """K = 1: careful mode, no adapter; a cache answer never overturns a base answer above 60%."""
    logits, keys, y = shifted_speaker(per_class=1, seed=2)
    data = cachebuild.assemble_arrays(LABELS, {"audio": keys}, logits)
    built = cachebuild.build("emoasst", data, LABELS, tune=True)
    assert built.hyper["tuning"] == "careful" and built.cache.adapter is None
    assert built.cache.alpha == pytest.approx(no_flip_alpha(cachebuild.SAFE_CONFIDENCE))
    g = torch.Generator().manual_seed(3)
    queries = keys[torch.randint(0, len(LABELS), (400,), generator=g)] + 0.05 * torch.randn(400, 64, generator=g)
    base = 3.0 * torch.randn(400, len(LABELS), generator=g)
    confident = base.softmax(1).max(1).values >= cachebuild.SAFE_CONFIDENCE
    assert int(confident.sum()) > 50 and int((~confident).sum()) > 50
    after = built.cache.logits(base, {"audio": queries}).argmax(1)
    assert torch.equal(after[confident], base.argmax(1)[confident])
    assert bool((after[~confident] != base.argmax(1)[~confident]).any())  # unsure answers it may change


def test_a_labelled_clip_is_answered_by_the_fit_without_it_and_the_state_round_trips() -> None:
    logits, keys, y = shifted_speaker(per_class=4, seed=4)
    adapter, held = fit_adapter(logits, y, keys, "audio")  # leave-one-out: one fit per clip
    cache = FewShotCache.build({"audio": keys}, [LABELS[int(i)] for i in y], LABELS, alpha=0.0, vote="mean")
    cache.adapter = adapter
    for row in (0, 9, 27):
        own = cache.without([row]).logits(logits[row:row + 1], {"audio": keys[row:row + 1]})
        assert torch.allclose(own[0], held[row], atol=1e-4)  # the judged held-out answer, not the full fit's
        assert not torch.allclose(own[0], cache.logits(logits[row:row + 1], {"audio": keys[row:row + 1]})[0], atol=1e-3)
    loaded = FewShotCache.from_state(cache.state_dict())
    query = {"audio": keys[:5]}
    assert torch.allclose(loaded.logits(logits[:5], query), cache.logits(logits[:5], query), atol=1e-5)
    assert torch.allclose(loaded.without([3]).logits(logits[3:4], {"audio": keys[3:4]})[0], held[3], atol=1e-4)


def test_a_label_added_after_the_fit_is_neither_favoured_nor_penalised() -> None:
    logits, keys, y = shifted_speaker(per_class=3, seed=6)
    present = y != LABELS.index("surprise")  # nobody labelled surprise
    adapter, _ = fit_adapter(logits[present], y[present], None)
    surprise = LABELS.index("surprise")
    others = [c for c in range(len(LABELS)) if c != surprise]
    assert adapter.key is None and adapter.weight is None
    assert float(adapter.bias[surprise]) == pytest.approx(float(adapter.bias[others].mean()), abs=1e-5)
    wider = adapter.logits(torch.zeros(2, len(LABELS) + 1), {})  # a label added to the profile since
    assert float(wider[0, -1]) == pytest.approx(float(adapter.bias.mean()), abs=1e-5)
    with pytest.raises(ValueError, match="base columns"):
        adapter.logits(torch.zeros(1, 3), {})
    assert ProfileAdapter.from_state({}, "audio") is None
    assert math.isfinite(float(adapter.bias.sum()))


def test_above_the_fit_limit_a_subset_is_fitted_and_the_other_clips_get_the_full_fit(monkeypatch) -> None:
    """Thousands of labelled clips: the adapter is fitted and judged on a label-blind subset (bounded cost);
    a labelled clip outside it was seen by no fit, so the full fit answers it; one inside gets its fold's."""
    monkeypatch.setattr(cachebuild, "ADAPTER_MAX_CLIPS", 20)
    logits, keys, y = shifted_speaker(per_class=6, seed=7)
    data = cachebuild.assemble_arrays([LABELS[int(i)] for i in y], {"audio": keys}, logits)
    built = cachebuild.build("emoasst", data, LABELS, tune=True)
    assert built.hyper["method"] == "adapter", built.metrics
    assert built.metrics["adapter"]["n"] == built.metrics["scored"] == 20 and built.metrics["n"] == 42
    fold = built.cache.adapter.held_out.fold
    assert int((fold == -1).sum()) == 22
    unseen, seen = int(torch.nonzero(fold == -1)[0]), int(torch.nonzero(fold >= 0)[0])
    for row, same in ((unseen, True), (seen, False)):
        q = {"audio": keys[row:row + 1]}
        full = built.cache.logits(logits[row:row + 1], q)
        own = built.cache.without([row]).logits(logits[row:row + 1], q)
        assert torch.allclose(full, own, atol=1e-5) == same


def test_a_warm_rebuild_reuses_the_fit_only_while_its_clips_and_labels_are_the_same() -> None:
    from emoweb.services.cacheloo import AffinityMemo

    logits, keys, y = shifted_speaker(per_class=4, seed=8)
    labels = [LABELS[int(i)] for i in y]
    memo = AffinityMemo()
    first = cachebuild.build("emoasst", cachebuild.assemble_arrays(labels, {"audio": keys}, logits), LABELS, tune=True, memo=memo)
    fitted = memo.adapter
    again = cachebuild.build("emoasst", cachebuild.assemble_arrays(labels, {"audio": keys}, logits), LABELS, tune=True, memo=memo)
    assert memo.adapter is fitted and again.cache.adapter.bias is first.cache.adapter.bias  # reused, not refitted
    assert again.metrics["adapter"] == first.metrics["adapter"]
    relabelled = ["joy" if i == 0 else label for i, label in enumerate(labels)]  # one correction
    third = cachebuild.build("emoasst", cachebuild.assemble_arrays(relabelled, {"audio": keys}, logits), LABELS, tune=True, memo=memo)
    assert memo.adapter is not fitted and not torch.equal(third.cache.adapter.bias, first.cache.adapter.bias)
