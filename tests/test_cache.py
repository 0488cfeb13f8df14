"""Few-shot cache: maths against hand-computed numbers, joint modalities, new labels, tuning, persistence."""
from __future__ import annotations

import io
import math
import time

import pytest
import torch

from models.folds import stratified_folds
from models.cache import (
    ALPHA_PER_SPREAD, SPREAD_BETA, FewShotCache, default_hyperparameters, logit_spread, logits_from_probs,
    no_flip_alpha, search_hyperparameters,
)

NAN = float("nan")


def small_cache(alpha: float = 0.5, beta: float = 2.0) -> FewShotCache:
    # e0 = (1, 0) "A", e1 = (0, 1) "B", e2 = (0.6, 0.8) "A"  (all unit already)
    keys = {"fused": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])}
    return FewShotCache.build(keys, ["A", "B", "A"], ["A", "B"], alpha=alpha, beta=beta)


def test_hand_computed_logits() -> None:
    cache = small_cache(alpha=0.5, beta=2.0)
    # query (2, 0) -> normalised (1, 0); cosines with e0, e1, e2 = 1, 0, 0.6
    # affinity = exp(-2 * (1 - cos)) = [exp(0), exp(-2), exp(-0.8)] = [1, 0.135335, 0.449329]
    q = {"fused": torch.tensor([[2.0, 0.0]])}
    aff = cache.affinity(q)
    assert torch.allclose(aff, torch.tensor([[1.0, 0.135335, 0.449329]]), atol=1e-5)
    # affinity @ V: A = 1 + 0.449329 = 1.449329, B = 0.135335
    # alpha * that = [0.724664, 0.067668]; base [0, 1] -> logits [0.724664, 1.067668]
    logits = cache.logits(torch.tensor([[0.0, 1.0]]), q)
    assert torch.allclose(logits, torch.tensor([[0.724664, 1.067668]]), atol=1e-5)
    assert torch.allclose(cache.probs(torch.tensor([[0.0, 1.0]]), q).sum(1), torch.ones(1))
    assert cache.values.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]


def test_default_hyperparameters_and_logits_from_probs() -> None:
    cache = FewShotCache.build({"fused": torch.eye(2)}, ["A", "B"], ["A", "B"])
    assert (cache.alpha, cache.beta) == (1.17, 1.0)
    probs = torch.tensor([[0.7, 0.3]])
    assert torch.allclose(logits_from_probs(probs), probs.log())


def joint_cache() -> FewShotCache:
    # example 0 has audio (1, 0) and visual (0, 1); example 1 has audio (0, 1) and NO visual (NaN row)
    keys = {
        "audio": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "visual": torch.tensor([[0.0, 1.0], [NAN, NAN]]),
    }
    return FewShotCache.build(keys, ["A", "B"], ["A", "B"], alpha=1.0, beta=1.0)


def test_joint_affinity_both_modalities_and_missing_example_modality() -> None:
    cache = joint_cache()
    assert cache.masks["visual"].tolist() == [True, False]
    q = {"audio": torch.tensor([[1.0, 0.0]]), "visual": torch.tensor([[0.6, 0.8]])}
    # example 0: audio cos 1 -> exp(0) = 1; visual cos 0.8 -> exp(-0.2) = 0.818731; mean = 0.909365
    # example 1: audio cos 0 -> exp(-1) = 0.367879; visual missing -> only audio counts = 0.367879
    assert torch.allclose(cache.affinity(q), torch.tensor([[0.909365, 0.367879]]), atol=1e-5)


def test_joint_affinity_query_missing_a_modality() -> None:
    cache = joint_cache()
    # audio-only query: both examples are compared on audio alone
    audio_only = cache.affinity({"audio": torch.tensor([[1.0, 0.0]])})
    assert torch.allclose(audio_only, torch.tensor([[1.0, math.exp(-1)]]), atol=1e-6)
    # video-only query: example 0 by visual (0.818731); example 1 shares no modality -> 0
    video_only = cache.affinity({"visual": torch.tensor([[0.6, 0.8]])})
    assert torch.allclose(video_only, torch.tensor([[0.818731, 0.0]]), atol=1e-5)
    # mixed batch: row 0 has both, row 1 lacks audio (NaN row) -> same as video-only
    batch = {
        "audio": torch.tensor([[1.0, 0.0], [NAN, NAN]]),
        "visual": torch.tensor([[0.6, 0.8], [0.6, 0.8]]),
    }
    aff = cache.affinity(batch)
    assert torch.allclose(aff[1], video_only[0], atol=1e-6)
    assert torch.allclose(aff[0], torch.tensor([0.909365, 0.367879]), atol=1e-5)
    # a modality the cache does not have is ignored
    extra = cache.affinity({"audio": torch.tensor([[1.0, 0.0]]), "text": torch.ones(1, 5)})
    assert torch.allclose(extra, audio_only)
    with pytest.raises(ValueError):
        cache.affinity({"audio": torch.ones(1, 3)})


def test_class_without_entries_gets_only_base_score() -> None:
    cache = FewShotCache.build({"fused": torch.eye(2)}, ["A", "B"], ["A", "B", "C"], alpha=2.0, beta=1.0)
    base = torch.tensor([[0.1, 0.2, 0.3]])
    out = cache.logits(base, {"fused": torch.tensor([[1.0, 0.0]])})
    assert out[0, 2] == pytest.approx(0.3)
    assert out[0, 0] > base[0, 0]
    empty = FewShotCache.build({"fused": torch.zeros(0, 2)}, [], ["A", "B"])
    assert torch.equal(empty.logits(base[:, :2], {"fused": torch.ones(1, 2)}), base[:, :2])


def test_new_label_predicted_for_its_own_example_and_near_duplicate() -> None:
    cache = FewShotCache.build(
        {"fused": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}, ["A", "B"], ["A", "B"], alpha=1.17, beta=5.0
    )
    cache.add({"fused": torch.tensor([[0.0, 0.0, 1.0]])}, ["wobbly"])  # a child's own word
    assert cache.labels == ["A", "B", "wobbly"]
    base = torch.tensor([[1.0, 0.5]])  # the model only knows A and B; it leans to A
    own = cache.logits(base, {"fused": torch.tensor([[0.0, 0.0, 1.0]])})
    # wobbly: mean(1.0, 0.5) = 0.75 + 1.17 * 1 = 1.92; A: 1.0 + 1.17 * exp(-5) = 1.0079
    assert torch.allclose(own, torch.tensor([[1.0 + 1.17 * math.exp(-5), 0.5 + 1.17 * math.exp(-5), 1.92]]), atol=1e-4)
    assert cache.labels[int(own.argmax())] == "wobbly"
    near = cache.logits(base, {"fused": torch.tensor([[0.1, 0.0, 1.0]])})
    assert cache.labels[int(near.argmax())] == "wobbly"
    far = cache.logits(base, {"fused": torch.tensor([[1.0, 0.0, 0.1]])})
    assert cache.labels[int(far.argmax())] == "A"
    # the caller may give the new label's own base score (e.g. zero-shot from its text), in any column order
    named = cache.logits(torch.tensor([[0.5, -3.0, 1.0]]), {"fused": torch.tensor([[0.0, 0.0, 1.0]])},
                         base_labels=["B", "wobbly", "A"])
    assert named[0, 2] == pytest.approx(-3.0 + 1.17, abs=1e-4)
    assert named[0, 0] == pytest.approx(1.0 + 1.17 * math.exp(-5), abs=1e-4)
    with pytest.raises(ValueError):
        cache.logits(base, {"fused": torch.ones(1, 3)}, base_labels=["A", "nope"])


def test_unknown_example_labels_become_columns_at_build() -> None:
    cache = FewShotCache.build({"fused": torch.eye(3)}, ["A", "calm", "B"], ["A", "B"])
    assert cache.labels == ["A", "B", "calm"]
    assert cache.add_label("B") == 1 and cache.add_label("tired") == 3
    assert cache.values.shape == (3, 4)


def test_nearest_ordering() -> None:
    angles = [0.0, 0.3, 1.0, 2.0]  # radians from the x axis
    keys = torch.tensor([[math.cos(t), math.sin(t)] for t in angles])
    cache = FewShotCache.build({"fused": keys}, ["A", "B", "A", "B"], ["A", "B"])
    q = {"fused": torch.tensor([[math.cos(0.25), math.sin(0.25)], [math.cos(2.1), math.sin(2.1)]])}
    near = cache.nearest(q, k=3)
    assert [i for i, _, _ in near[0]] == [1, 0, 2]
    assert [lab for _, lab, _ in near[0]] == ["B", "A", "A"]
    assert near[0][0][2] == pytest.approx(math.cos(0.05), abs=1e-6)
    assert [i for i, _, _ in near[1]] == [3, 2, 1]
    assert len(cache.nearest(q, k=10)[0]) == 4
    # joint cache: an example sharing no modality with the query is not listed
    assert [i for i, _, _ in joint_cache().nearest({"visual": torch.tensor([[0.0, 1.0]])}, k=5)[0]] == [0]


def test_leave_one_out_accuracy_matches_explicit_rebuilds() -> None:
    cache = small_cache(alpha=0.5, beta=2.0)
    base = torch.tensor([[0.01, 0.0]]).repeat(3, 1)  # the base model says "A" for everything: e0, e2 right
    res = cache.leave_one_out_accuracy(base)
    # alpha 0.5, beta 2; each example scored without itself:
    # e0 (A) sees e1 (B, cos 0 -> exp(-2) = 0.1353) and e2 (A, cos 0.6 -> exp(-0.8) = 0.4493):
    #    A 0.01 + 0.5 * 0.4493 = 0.2347  vs  B 0 + 0.5 * 0.1353 = 0.0677   -> A, right
    # e1 (B) sees e0 (A, 0.1353) and e2 (A, cos 0.8 -> exp(-0.4) = 0.6703):
    #    A 0.01 + 0.5 * 0.8056 = 0.4128  vs  B 0                          -> A, wrong
    # e2 (A) sees e0 (A, 0.4493) and e1 (B, 0.6703):
    #    A 0.01 + 0.5 * 0.4493 = 0.2347  vs  B 0.5 * 0.6703 = 0.3352      -> B, wrong
    assert res == {"n": 3, "before": pytest.approx(2 / 3), "after": pytest.approx(1 / 3)}
    keys = cache.keys["fused"]
    hits = 0
    for i in range(3):
        keep = [j for j in range(3) if j != i]
        sub = FewShotCache.build({"fused": keys[keep]}, [cache.example_labels[j] for j in keep], ["A", "B"], 0.5, 2.0)
        pred = sub.logits(base[i:i + 1], {"fused": keys[i:i + 1]}).argmax()
        hits += int(cache.labels[int(pred)] == cache.example_labels[i])
    assert res["after"] == pytest.approx(hits / 3)


def clustered(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 0.35):
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(99)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=fixed), dim=1)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g) / math.sqrt(dim)
    return x, y


def test_search_picks_useful_values_and_only_sees_the_labelled_set() -> None:
    labels = ["a", "b", "c", "d"]
    x, y = clustered(30, 4, 32, seed=1)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(len(y), 4, generator=g)  # a weak base model: mostly noise...
    base[torch.arange(len(y)), y] += 0.8  # ...with a small push towards the truth
    seen: list[int] = []

    def base_fn(keys: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(keys["fused"].shape[0])
        return base

    names = [labels[i] for i in y]
    res = search_hyperparameters({"fused": x}, names, base_fn, label_set=labels)
    assert seen == [len(y)]  # called once, on the labelled set only
    assert res.folds == len(y)  # 120 <= 200 examples: leave-one-out
    assert res.accuracy > res.base_accuracy + 0.2
    assert res.alpha > 0.1  # the cache is worth using here
    # the chosen values generalise to evaluation data the search never saw
    x_eval, y_eval = clustered(50, 4, 32, seed=3)
    base_eval = torch.randn(len(y_eval), 4, generator=g)
    base_eval[torch.arange(len(y_eval)), y_eval] += 0.8
    cache = FewShotCache.build({"fused": x}, names, labels, alpha=res.alpha, beta=res.beta)
    acc_cache = (cache.logits(base_eval, {"fused": x_eval}).argmax(1) == y_eval).float().mean()
    acc_base = (base_eval.argmax(1) == y_eval).float().mean()
    assert acc_cache > acc_base + 0.2
    # tune() on the cache gives the same answer and sets it
    cache2 = FewShotCache.build({"fused": x}, names, labels)
    assert cache2.tune(base) == res and (cache2.alpha, cache2.beta) == (res.alpha, res.beta)


def test_default_search_follows_the_base_logit_scale() -> None:
    # A trained EmoAsst's logits are 100 x cosine: classes ~10 apart. Searched in the logits' own
    # units, the cache must help as much there as at scale 1 (a fixed Tip-Adapter range, alpha < 3,
    # left every EmoAsst decision unchanged).
    x, y = clustered(30, 4, 32, seed=1)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(len(y), 4, generator=g)
    base[torch.arange(len(y)), y] += 0.8
    names = [["w", "x", "y", "z"][i] for i in y]
    small = search_hyperparameters({"fused": x}, names, base)
    large = search_hyperparameters({"fused": x}, names, 100 * base)
    assert large.accuracy == small.accuracy > large.base_accuracy + 0.2
    assert large.alpha == pytest.approx(100 * small.alpha) and large.beta == small.beta
    alpha, beta = default_hyperparameters(100 * base)
    assert alpha == pytest.approx(ALPHA_PER_SPREAD * logit_spread(100 * base)) and beta == SPREAD_BETA
    assert logit_spread(100 * base) == pytest.approx(100 * logit_spread(base))
    assert logit_spread(torch.zeros(5, 4)) == logit_spread(torch.zeros(0, 4)) == 1.0  # nothing to measure


def test_search_never_scores_an_example_with_itself() -> None:
    # random keys with random labels: no structure, so honest CV is near chance; a leak of each
    # example into its own cache would reach 100 % with a large alpha and beta
    g = torch.Generator().manual_seed(5)
    x = torch.randn(80, 64, generator=g)
    names = [["a", "b", "c", "d"][int(i)] for i in torch.randint(0, 4, (80,), generator=g)]
    base = torch.zeros(80, 4)
    for folds in (None, 5):
        res = search_hyperparameters({"fused": x}, names, base, folds=folds, label_set=["a", "b", "c", "d"])
        assert res.accuracy < 0.6


def test_kfold_equals_explicit_per_fold_rebuild() -> None:
    x, y = clustered(20, 3, 8, seed=7, spread=1.5)
    labels = ["p", "q", "r"]
    names = [labels[i] for i in y]
    g = torch.Generator().manual_seed(8)
    base = torch.randn(len(y), 3, generator=g)
    alpha, beta = 0.7, 3.0
    res = search_hyperparameters({"fused": x}, names, base, alphas=[alpha], betas=[beta], folds=4,
                                 label_set=labels, seed=11)
    fold = stratified_folds(y, 4, 11)
    assert torch.bincount(fold).tolist() == [15, 15, 15, 15]
    hits = 0
    for f in range(4):
        tr, te = fold != f, fold == f
        cache = FewShotCache.build({"fused": x[tr]}, [n for n, t in zip(names, tr) if t], labels, alpha, beta)
        hits += int((cache.logits(base[te], {"fused": x[te]}).argmax(1) == y[te]).sum())
    assert res.accuracy == pytest.approx(hits / len(y))
    assert (res.alpha, res.beta, res.folds) == (alpha, beta, 4)


def test_search_with_missing_modalities() -> None:
    x, y = clustered(15, 3, 16, seed=4)
    audio = x.clone()
    visual = x + 0.1 * torch.randn_like(x)
    audio[::3] = NAN  # a third of the clips have no audio
    visual[1::3] = NAN  # another third no face
    names = [["a", "b", "c"][i] for i in y]
    res = search_hyperparameters({"audio": audio, "visual": visual}, names, torch.zeros(len(y), 3))
    assert res.accuracy > 0.8


def test_state_round_trip_dtypes() -> None:
    cache = joint_cache()
    cache.add({"audio": torch.tensor([[0.5, 0.5]])}, ["new"])
    cache.alpha, cache.beta = 0.39, 6.41
    state = cache.state_dict()
    assert state["keys.audio"].dtype == torch.float16 and state["mask.visual"].dtype == torch.bool
    assert state["labels"] == ["A", "B", "new"] and state["example_labels"] == ["A", "B", "new"]
    assert state["mask.visual"].tolist() == [True, False, False]
    blob = io.BytesIO()
    torch.save(state, blob)  # what the storage layer keeps
    blob.seek(0)
    back = FewShotCache.from_state(torch.load(blob))
    assert back.keys["audio"].dtype == torch.float32 and back.values.dtype == torch.float32
    assert back.labels == cache.labels and back.example_labels == cache.example_labels
    assert (back.alpha, back.beta) == (0.39, 6.41)
    assert torch.equal(back.masks["visual"], cache.masks["visual"])
    q = {"audio": torch.tensor([[0.9, 0.1]]), "visual": torch.tensor([[0.2, 0.8]])}
    base = torch.tensor([[0.3, 0.1, 0.0]])
    assert torch.allclose(back.logits(base, q), cache.logits(base, q), atol=1e-2)
    # half-precision input embeddings (as read back from blobs) work too
    half = FewShotCache.build({"fused": torch.eye(2, dtype=torch.float16)}, ["A", "B"], ["A", "B"])
    assert half.keys["fused"].dtype == torch.float32
    q_half = {"fused": torch.tensor([[1.0, 0.0]], dtype=torch.float16)}
    assert half.logits(torch.zeros(1, 2, dtype=torch.float16), q_half).dtype == torch.float32


def test_rebuild_and_search_are_fast() -> None:
    # loose bounds (shared CI machines); the targets are 0.2 s and ~2 s
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(10_000, 384, generator=g).half()
    names = [str(i % 7) for i in range(10_000)]
    t0 = time.perf_counter()
    FewShotCache.build({"fused": keys}, names, [str(i) for i in range(7)])
    assert time.perf_counter() - t0 < 1.0
    x, y = clustered(143, 7, 384, seed=0)
    t0 = time.perf_counter()
    search_hyperparameters({"fused": x}, [str(int(i)) for i in y], torch.zeros(len(y), 7))
    assert time.perf_counter() - t0 < 10.0


def test_row_blocks_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.cache as cache_mod

    x, y = clustered(10, 3, 8, seed=9, spread=1.0)
    names = [["a", "b", "c"][i] for i in y]
    base = torch.randn(len(y), 3, generator=torch.Generator().manual_seed(1))
    cache = FewShotCache.build({"fused": x}, names, ["a", "b", "c"], alpha=0.8, beta=3.0)
    whole_loo = cache.leave_one_out_accuracy(base)
    whole_cv = search_hyperparameters({"fused": x}, names, base, folds=3)
    monkeypatch.setattr(cache_mod, "_CHUNK", 7)  # 30 rows in blocks of 7: the diagonal crosses block edges
    assert cache.leave_one_out_accuracy(base) == whole_loo
    assert search_hyperparameters({"fused": x}, names, base, folds=3) == whole_cv
    sub = search_hyperparameters({"fused": x}, names, base, folds=3, max_eval=10)
    assert sub.folds == 3 and (sub.accuracy * 10) == pytest.approx(round(sub.accuracy * 10))


def test_mean_votes_bound_the_cache_and_no_flip_alpha_keeps_confident_answers() -> None:
    """Issue 19's careful mode: class-mean votes lie in [0, 1], so alpha = log(c / (1 - c)) can never overturn
    an answer given with probability >= c, however the cached clips lie; below c it can."""
    assert no_flip_alpha(0.6) == pytest.approx(math.log(1.5)) and no_flip_alpha(0.8) == pytest.approx(math.log(4.0))
    for bad in (0.5, 1.0, 0.3):
        with pytest.raises(ValueError, match="confidence"):
            no_flip_alpha(bad)
    g = torch.Generator().manual_seed(0)
    confidence, flipped_below = 0.6, 0
    for _ in range(200):
        n, c = int(torch.randint(1, 12, (1,), generator=g)), 5
        keys = torch.randn(n, 8, generator=g)
        labels = [str(int(i)) for i in torch.randint(0, c, (n,), generator=g)]
        cache = FewShotCache.build({"fused": keys}, labels, [str(i) for i in range(c)], alpha=no_flip_alpha(confidence),
                                   beta=float(torch.rand(1, generator=g)) * 20, vote="mean")
        query = {"fused": torch.cat([keys, torch.randn(16, 8, generator=g)])}
        base = torch.randn(n + 16, c, generator=g) * 2
        p = base.softmax(-1)
        moved = cache.logits(base, query).argmax(-1) != base.argmax(-1)
        assert not bool((moved & (p.max(-1).values >= confidence)).any())
        flipped_below += int(moved.sum())
    assert flipped_below > 0  # the bound is not vacuous: unsure answers can be changed


def test_mean_vote_leave_one_out_matches_explicit_rebuilds() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    names, base = ["A", "B", "A", "B"], torch.tensor([[0.3, 0.0]]).repeat(4, 1)
    cache = FewShotCache.build({"fused": keys}, names, ["A", "B"], alpha=1.0, beta=2.0, vote="mean")
    hits = 0
    for i in range(4):
        keep = [j for j in range(4) if j != i]
        sub = FewShotCache.build({"fused": keys[keep]}, [names[j] for j in keep], ["A", "B"], 1.0, 2.0, vote="mean")
        hits += int(sub.logits(base[i:i + 1], {"fused": keys[i:i + 1]}).argmax() == ["A", "B"].index(names[i]))
    assert cache.leave_one_out_accuracy(base) == {"n": 4, "before": 0.5, "after": pytest.approx(hits / 4)}
    # search_hyperparameters scores the same held-out logits (leave-one-out up to 200 examples)
    res = search_hyperparameters({"fused": keys}, names, base, alphas=[1.0], betas=[2.0], label_set=["A", "B"], vote="mean")
    assert res.accuracy == pytest.approx(hits / 4) and res.folds == 4
    with pytest.raises(ValueError, match="vote"):
        FewShotCache.build({"fused": keys}, names, ["A", "B"], vote="median")
