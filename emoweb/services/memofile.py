"""A profile's feature memo on disk, so the first cache rebuild after a start costs what the next ones do.

Why: a rebuild in a running app reuses the features and leave-one-out affinities `featmemo` holds in
memory (10,000 clips: ~0.1 s), but the first one after a start read 40,000 feature rows from the
database and recomputed 500 x 10,000 affinities per model (~0.7-1.0 s). The file holds exactly what
the memory held, and is trusted no more: once loaded, `FeatureMemo.read` checks it against the
database as it checks the copy in memory. A file that cannot be read is deleted and ignored (the
database has everything in it).

Written after a rebuild by one background thread (a rebuild never waits on the disk), to a temp file
renamed into place, so a reader sees the old file or the new one. Deleting a clip or a profile deletes
the file (`Writer.forget`): a deleted clip's embeddings must not stay on disk. A write still running
then is discarded rather than renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from emoweb.services import tempfiles
from emoweb.services.cachearrays import StoredArrays
from emoweb.services.cacheloo import AffinityMemo
from models.adapter import ProfileAdapter

FORMAT = 1
ADAPTER_ARRAYS = ("adapter.bias", "adapter.weight", "adapter.fold_bias", "adapter.fold_weight")
MAGIC = b"EMOWEB-MEMO\n"  # then the header's length (8 bytes, little-endian), the JSON header, the arrays
ALIGN = 64
TEMP_KIND = tempfiles.MEMO
log = logging.getLogger(__name__)


def path_for(folder: Path, profile_id: int, backbone: str) -> Path:
    return folder / f"profile-{int(profile_id)}-{re.sub(r'[^A-Za-z0-9_-]', '_', backbone)}.memo"


def profile_pattern(profile_id: int) -> str:
    """Glob of a profile's memo files, under every backbone profile."""
    return f"profile-{int(profile_id)}-*.memo"


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_arrays(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """Named arrays as one header and their raw bytes, each at an aligned offset, so `read_arrays` is a
    single read into one buffer and every array a view of it (npz: a copy per member, ~3x slower)."""
    index, offset = {}, 0
    for name, array in arrays.items():
        index[name] = [array.dtype.str, list(array.shape), offset]
        offset += _padded(array.nbytes)
    header = json.dumps(index).encode()
    f.write(MAGIC + len(header).to_bytes(8, "little") + header)
    f.write(b"\0" * (_padded(f.tell()) - f.tell()))
    for array in arrays.values():
        data = np.ascontiguousarray(array).data
        f.write(data)
        f.write(b"\0" * (_padded(array.nbytes) - array.nbytes))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a feature memo file")
        index = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        f.seek(_padded(f.tell()))
        size = sum(_padded(int(np.dtype(d).itemsize * np.prod(shape))) for d, shape, _ in index.values())
        buffer = np.empty(size, np.uint8)
        if f.readinto(memoryview(buffer)) != size:
            raise ValueError("truncated feature memo file")
    out = {}
    for name, (dtype, shape, offset) in index.items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        out[name] = buffer[offset: offset + count * dt.itemsize].view(dt).reshape(shape)
    return out


def _rows_of(tokens: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """Row numbers of `wanted` tokens in the (increasing) row tokens, or None if one is not there."""
    at = np.searchsorted(tokens, wanted).clip(0, max(len(tokens) - 1, 0))
    return at if len(tokens) and bool((tokens[at] == wanted).all()) else None


def freeze(seen: dict[int, str], top: tuple[int, Any] | None, arrays: StoredArrays, loo: dict[str, AffinityMemo]) -> dict[str, np.ndarray]:
    """A profile entry as named arrays (views of rows that are never written again). Call it under the
    memo's lock; writing the result needs none."""
    n = arrays.rows
    clip_of_row = np.zeros(n, np.int64)
    clip_of_row[list(arrays.row_of.values())] = list(arrays.row_of.keys())
    out: dict[str, np.ndarray] = {
        "clip_ids": clip_of_row,
        "seen_ids": np.fromiter(seen.keys(), np.int64, len(seen)),
        "seen_sha": np.asarray(list(seen.values()), dtype="S64"),
    }
    meta: dict[str, Any] = {"format": FORMAT, "top": None if top is None else [top[0], top[1]], "loo": {}}
    for name, unit in arrays.units.items():
        out[f"units:{name}"], out[f"present:{name}"] = unit[:n].numpy(), arrays.present[name][:n].numpy()
    for name, logits in arrays.logits.items():
        out[f"logits:{name}"], out[f"widths:{name}"] = logits[:n], arrays.widths[name][:n]
    tokens = arrays.tokens[:n]
    for model, memo in loo.items():
        state = memo.state
        if state is None:
            continue
        signature, row_tokens, col_tokens, aff = state
        rows, cols = _rows_of(tokens, row_tokens), _rows_of(tokens, col_tokens)
        if rows is None or cols is None:  # scored against clips no longer held: not worth keeping
            continue
        meta["loo"][model] = {"beta": signature[0], "keys": [list(k) for k in signature[1]]}
        out[f"loo_rows:{model}"], out[f"loo_cols:{model}"], out[f"loo_aff:{model}"] = rows, cols, aff.numpy()
    meta["adapter"] = {}
    for model, memo in loo.items():
        fitted = memo.adapter
        rows = None if fitted is None else _rows_of(tokens, fitted[0])
        if rows is None:  # no fit, or one of clips no longer held
            continue
        _, (labels, label_set, key, seed), (adapter, fold_rows, judged) = fitted
        meta["adapter"][model] = {"labels": list(labels), "label_set": list(label_set), "key": key, "seed": seed, "judged": judged}
        out[f"adapter_rows:{model}"], out[f"adapter_fold_rows:{model}"] = rows, fold_rows.numpy()
        for name, t in adapter.state_dict().items():
            if name != "adapter.fold":  # over the rows of the rebuild that fitted it; fold_rows is what lasts
                out[f"{name}:{model}"] = t.numpy()
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return out


def thaw(data: dict[str, np.ndarray]) -> tuple[dict[int, str], tuple[int, Any] | None, StoredArrays, dict[str, AffinityMemo]]:
    """`freeze`'s arrays back as (seen, top, arrays, leave-one-out memos), rows given new tokens."""
    meta = json.loads(bytes(data["meta"]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"memo format {meta.get('format')!r}")
    seen = dict(zip(data["seen_ids"].tolist(), (s.decode() for s in data["seen_sha"])))
    top = None if meta["top"] is None else (int(meta["top"][0]), meta["top"][1])
    clip_ids = data["clip_ids"]
    n = len(clip_ids)
    arrays = StoredArrays()
    arrays.rows, arrays.tokens = n, arrays.new_tokens(n)
    arrays.row_of = dict(zip(clip_ids.tolist(), range(n)))
    for key in data:
        kind, _, name = key.partition(":")
        if kind == "units":
            arrays.units[name] = torch.from_numpy(data[key])
            arrays.present[name] = torch.from_numpy(data[f"present:{name}"])
        elif kind == "logits":
            arrays.logits[name], arrays.widths[name] = data[key], data[f"widths:{name}"]
    loo: dict[str, AffinityMemo] = {}
    for model, sig in meta["loo"].items():
        memo = loo[model] = AffinityMemo()
        signature = (sig["beta"], tuple((m, int(width)) for m, width in sig["keys"]))
        memo.restore((signature, arrays.tokens[data[f"loo_rows:{model}"]], arrays.tokens[data[f"loo_cols:{model}"]],
                      torch.from_numpy(data[f"loo_aff:{model}"])))
    for model, fit in meta.get("adapter", {}).items():  # memo files written before the adapter have none
        if "log_loss_after" not in fit["judged"]:  # judged before the log-loss rule (cachebuild.adapter_passes): fit again
            continue
        fold_rows = torch.from_numpy(data[f"adapter_fold_rows:{model}"])
        state = {name: torch.from_numpy(data[f"{name}:{model}"]) for name in ADAPTER_ARRAYS if f"{name}:{model}" in data}
        adapter = ProfileAdapter.from_state({**state, "adapter.fold": fold_rows}, fit["key"])
        inputs = (tuple(fit["labels"]), tuple(fit["label_set"]), fit["key"], int(fit["seed"]))
        loo.setdefault(model, AffinityMemo()).adapter = (arrays.tokens[data[f"adapter_rows:{model}"]], inputs,
                                                         (adapter, fold_rows, fit["judged"]))
    return seen, top, arrays, loo


def load(path: Path) -> tuple[dict[int, str], tuple[int, Any] | None, StoredArrays, dict[str, AffinityMemo]] | None:
    """The memo saved at `path`, or None when there is none or it cannot be read (then it is deleted)."""
    try:
        return thaw(read_arrays(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable feature memo %s: %s", path.name, exc)
        path.unlink(missing_ok=True)
        return None


class Writer:
    """Writes memos in a background thread, the latest per path; `forget` deletes one for good."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cond = threading.Condition()
        self._pending: dict[Path, tuple[int, dict[str, np.ndarray]]] = {}
        self._generation: dict[Path, int] = {}
        self._busy = False
        self._thread: threading.Thread | None = None
        tempfiles.sweep(folder, TEMP_KIND)  # what a process killed mid-write left

    def submit(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        with self._cond:
            self._pending[path] = (self._generation.setdefault(path, 0), arrays)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="feature-memo-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def forget(self, pattern: str) -> None:
        """Delete the files whose name matches the glob `pattern` now; pending or running writes of them
        are dropped."""
        with self._cond:
            known = {p for p in self._generation if p.match(pattern)} | set(self.folder.glob(pattern))
            for path in known:
                self._generation[path] = self._generation.get(path, 0) + 1
                self._pending.pop(path, None)
                path.unlink(missing_ok=True)

    def flush(self) -> None:
        """Wait until every submitted memo is written."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                path = next(iter(self._pending))
                generation, arrays = self._pending.pop(path)
                self._busy = True
            temp = None
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd, temp = tempfile.mkstemp(dir=self.folder, prefix=tempfiles.temp_prefix(TEMP_KIND), suffix=".memo")
                with os.fdopen(fd, "wb") as f:
                    write_arrays(f, arrays)
                with self._cond:
                    if self._generation.get(path, 0) == generation:
                        os.replace(temp, path)
                        temp = None
            except OSError as exc:  # e.g. a full disk: the next start reads the database instead
                log.warning("could not write feature memo %s: %s", path.name, exc)
            finally:
                if temp is not None:
                    Path(temp).unlink(missing_ok=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
