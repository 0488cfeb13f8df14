"""A profile's few-shot caches rebuilt from its labelled clips' stored features (never media), and saved.

A rebuild writes every model's snapshot in one transaction: a crash or kill before the commit leaves
the previous snapshots active. Features read for a rebuild stay in memory (`featmemo`), checked
against the database on every use, and so do the last leave-one-out affinities; after a rebuild both
are also written to a file in the data dir (`memofile`), so the first rebuild after a restart is as fast.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from emoweb.services import cachearrays, cachebuild, cacheloo
from emoweb.services.context import ServiceContext
from emoweb.services.modelinfo import in_model_order
from emoweb.services.records import ModelRebuild
from emoweb.services.store import CaregiverRepository
from storage.schema import Profile

KEEP_SNAPSHOTS = 2  # inactive snapshots kept per (profile, model), to roll a rebuild back


def _still_valid(hyper: dict | None, examples: dict[int, str] | None, labels: dict[int, str]) -> bool:
    """Whether a model's active cache may stay in use when its rebuild is kept off: it passed the same
    judgement (a careful-mode or older snapshot never did), and every example it holds is still a clip with
    that label (`labels`: the current ones, a clip being deleted left out). A deleted clip, a label changed
    or undone since: the old cache goes, and the model answers alone until a rebuild passes."""
    if not hyper or not hyper.get("active") or not hyper.get("judged") or not examples:
        return False
    return all(labels.get(clip_id) == label for clip_id, label in examples.items())


class Rebuilds:
    """Build caches from stored features, save them as snapshots, and make this process use them."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def build(self, prof: Profile, models: Iterable[str] | None, exclude: set[int], tune: bool | str = "auto") -> list[cachebuild.Built]:
        """New caches from stored features only (never media): the profile's labelled clips minus `exclude`.
        Features come through the memo (only clips new to it are read), and so do the last leave-one-out
        affinities of each model. `models`: None for every model with stored logits or a snapshot."""
        ctx, memo = self.ctx, self.ctx.features
        t0 = time.perf_counter()
        assembled, memos, seconds = {}, {}, {}
        with ctx.sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            repo.begin_snapshot()  # labels, features and names from one snapshot of the database
            active = repo.active_snapshots_held(prof.id)
            previous = {model: hyper for model, (hyper, _) in active.items()}
            labels = {c: label for c, label in repo.current_labels(prof.id).items() if c not in exclude}
            with memo.lock:  # only while reading and assembling: tuning may take seconds
                features = memo.read(repo, prof.id, ctx.backbone, labels)
                # a held clip's names are in memory (its features never change); only the others are read
                unheld = features.seen.keys() - features.arrays.row_of.keys()
                names = features.arrays.names() | set(repo.feature_names(prof.id, ctx.backbone, unheld))
                stored = {m for m, part in map(cachearrays.split_name, names) if part == cachearrays.LOGITS}
                # in the registry's order: what every caller shows (rebuild results, a deletion's rebuilt models)
                wanted = list(in_model_order(dict.fromkeys(set(models) if models is not None else stored | set(previous))))
                load = time.perf_counter() - t0  # one read for all models
                for model in wanted:
                    t1 = time.perf_counter()
                    assembled[model] = cachearrays.assemble(model, labels, features.arrays)
                    memos[model] = features.loo.setdefault(model, cacheloo.AffinityMemo())
                    seconds[model] = time.perf_counter() - t1
        built = []
        for model in wanted:
            b = cachebuild.build(model, assembled[model], prof.label_set, tune, previous.get(model), memo=memos[model])
            b.keep_previous = not b.hyper["active"] and _still_valid(*active.get(model, (None, None)), labels)
            b.hyper["backbone_profile"] = ctx.backbone  # where `Predictions` finds the features
            b.metrics["timings"] = {"load": round(load, 4), "assemble": round(seconds[model], 4), **b.metrics["timings"]}
            built.append(b)
        return built

    def save(self, repo: CaregiverRepository, prof: Profile, built: list[cachebuild.Built]) -> dict[str, ModelRebuild]:
        """The built caches as snapshots, in the caller's transaction (pauses at "rebuild.commit" after)."""
        results = {}
        for b in built:
            t0 = time.perf_counter()
            snapshot = repo.save_snapshot(
                prof.id, b.model, cachebuild.payload(b), b.cache.example_labels, b.hyper, b.metrics,
                activate=not b.keep_previous,
            )
            repo.prune_snapshots(prof.id, b.model, KEEP_SNAPSHOTS)
            m = b.metrics
            timings = {**m["timings"], "save": round(time.perf_counter() - t0, 4)}
            results[b.model] = ModelRebuild(
                model=b.model, snapshot_id=snapshot.id, n=len(b.cache), n_per_label=cachebuild.n_per_label(b.cache.example_labels),
                alpha=b.cache.alpha, beta=b.cache.beta, tuning=b.hyper["tuning"], before=m["before"], after=m["after"],
                skipped=m["skipped"], seconds=round(sum(timings.values()), 4), timings=timings, scored=m["scored"],
                active=bool(b.hyper["active"]), outcome=cachebuild.outcome(b.hyper, m, b.keep_previous), method=b.hyper["method"],
                judged=bool(b.hyper["judged"]),
            )
        self.ctx.pause("rebuild.commit")
        return results

    def remember(self, prof: Profile, built: list[cachebuild.Built], results: dict[str, ModelRebuild]) -> None:
        """After the commit: the caches just built are what their snapshots would load (the same stored
        features), so predictions use them without reading the snapshots back."""
        ctx = self.ctx
        with ctx.lock:
            ctx.invalidate(prof.id)
            for b in built:
                if not b.keep_previous:  # a kept previous cache is reloaded from its (still active) snapshot
                    ctx.caches[(prof.id, b.model)] = (results[b.model].snapshot_id, b.cache, b.clip_ids)

    def rebuild(self, prof: Profile, models: Iterable[str] | None = None, tune: bool | str = "auto") -> dict[str, ModelRebuild]:
        """See `CaregiverService.rebuild_cache`."""
        built = self.build(prof, models, exclude=set(), tune=tune)
        with self.ctx.sessions() as session, session.begin():
            results = self.save(CaregiverRepository(session), prof, built)
            t0 = time.perf_counter()
        commit = round(time.perf_counter() - t0, 4)  # shared by all models, like load
        results = {
            m: dataclasses.replace(r, seconds=round(r.seconds + commit, 4), timings={**r.timings, "commit": commit})
            for m, r in results.items()
        }
        self.remember(prof, built, results)
        self.ctx.features.persist(prof.id, self.ctx.backbone)
        return results
