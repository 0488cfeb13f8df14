"""Convert MediaPipe's `face_detection_short_range.tflite` to `models/weights/blazeface_short_range.safetensors`.

Usage: python -m models.backbones.convert_blazeface --wheel mediapipe-0.10.21-...whl  [--out-dir DIR]
       (get the wheel with `pip download mediapipe==0.10.21 --no-deps -d /tmp/mp`; or --tflite PATH)

Why a one-off converter: mediapipe pins numpy < 2, so it is never installed. The tflite flatbuffer is read
with the `tflite` parser (requirements-dev.txt); every operator's kind, stride and padding is checked against
the torch architecture, the float16 tensors are transposed to torch layouts and written once, and the torch
module is compared with the TFLite interpreter (ai-edge-litert, also dev-only) on random inputs.
"""
from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from models.backbones.blazeface import BLOCKS, BlazeFaceDetector, BlazeFaceShortRange

MEDIAPIPE_VERSION = "0.10.21"
TFLITE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
LICENSE_MEMBER = f"mediapipe-{MEDIAPIPE_VERSION}.dist-info/LICENSE"
TFLITE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"  # in mediapipe 0.10.21
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
OUT_NAME = "blazeface_short_range.safetensors"
NOTICE_NAME = "NOTICE-blazeface.md"
TOLERANCE = 1e-3  # on raw regressors (input pixels) and logits; float32 both sides, only op order differs


def _torch_names() -> dict[str, str]:
    """tflite layer name -> torch parameter prefix."""
    names = {"conv2d": "stem", "classificator_8": "cls8", "regressor_8": "reg8",
             "classificator_16": "cls16", "regressor_16": "reg16"}
    for i in range(len(BLOCKS)):
        names[f"depthwise_conv2d{'' if i == 0 else f'_{i}'}"] = f"blocks.{i}.dw"
        names[f"conv2d_{i + 1}"] = f"blocks.{i}.pw"
    return names


def read_tflite(buf: bytes) -> tuple[dict[str, np.ndarray], list[tuple[str, str, int, int]]]:
    """({tensor name: float32 array}, [(op kind, kernel tensor name, stride, padding)] for convs)."""
    import tflite

    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    tensors = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if t.Type() == tflite.TensorType.FLOAT16 and not isinstance(data, int):
            tensors[t.Name().decode()] = np.frombuffer(data.tobytes(), np.float16).reshape(t.ShapeAsNumpy()).astype(np.float32)
    convs = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            opts = (tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)()
            raw = op.BuiltinOptions()
            opts.Init(raw.Bytes, raw.Pos)
            kernel = graph.Tensors(op.Inputs(1)).Name().decode().split("/")[0]
            convs.append((kind, kernel, opts.StrideH(), opts.Padding()))
    return tensors, convs


def to_state_dict(tensors: dict[str, np.ndarray], convs: list[tuple[str, str, int, int]]) -> dict[str, torch.Tensor]:
    """Torch state dict; raises when the graph is not the architecture `BlazeFaceShortRange` builds."""
    names = _torch_names()
    model = BlazeFaceShortRange()
    modules = dict(model.named_modules())
    seen = set()
    for kind, layer, stride, padding in convs:
        target = modules[names[layer]]
        same = padding == 0  # tflite Padding.SAME (the torch module pads every k > 1 conv 'SAME'; 1x1: no matter)
        if target.stride[0] != stride or (target.kernel_size[0] > 1 and not same) or (kind == "DEPTHWISE_CONV_2D") != (target.groups > 1):
            raise SystemExit(f"{layer}: {kind} stride {stride} padding {padding} does not match {names[layer]}")
        seen.add(layer)
    if seen != set(names):
        raise SystemExit(f"layers missing from the tflite graph: {sorted(set(names) - seen)}")
    state = {}
    for layer, prefix in names.items():
        kernel = tensors[f"{layer}/Kernel"]
        # conv OHWI -> OIHW; depthwise 1HWC -> C1HW
        state[f"{prefix}.weight"] = torch.from_numpy(kernel.transpose(3, 0, 1, 2) if layer.startswith("depthwise") else kernel.transpose(0, 3, 1, 2))
        state[f"{prefix}.bias"] = torch.from_numpy(tensors[f"{layer}/Bias"])
    model.load_state_dict(state)  # strict: every parameter, right shapes
    return {k: v.contiguous() for k, v in state.items()}


def check_against_tflite(buf: bytes, model: BlazeFaceShortRange, n: int = 4) -> float:
    """Largest |torch - tflite| over raw scores and regressors on random inputs; raises over TOLERANCE."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=buf)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    detector = BlazeFaceDetector(model)
    worst = 0.0
    rng = np.random.default_rng(0)
    for _ in range(n):
        x = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        scores, regress = detector.raw(x)
        worst = max(worst, float(np.abs(interpreter.get_tensor(outs["classificators"])[0, :, 0] - scores[0].numpy()).max()),
                    float(np.abs(interpreter.get_tensor(outs["regressors"])[0] - regress[0].numpy()).max()))
    if worst > TOLERANCE:
        raise SystemExit(f"torch BlazeFace differs from the tflite interpreter by {worst:.2g} (> {TOLERANCE})")
    return worst


def write_notice(out_dir: Path, licence: str) -> Path:
    """Provenance of the converted weights and MediaPipe's Apache-2.0 licence (which it requires us to keep)."""
    text = f"""# BlazeFace short-range weights in models/weights/

## blazeface_short_range.safetensors

MediaPipe's BlazeFace short-range face detector, converted from TFLite to safetensors (float16, as
stored in the tflite file; torch layouts). The tensors are the original trained weights, only
transposed (TFLite OHWI -> torch OIHW; depthwise 1HWC -> C1HW).

- Source package: `mediapipe` {MEDIAPIPE_VERSION} on PyPI (https://pypi.org/project/mediapipe/{MEDIAPIPE_VERSION}/), by Google
- Source file: `{TFLITE_MEMBER}` in the wheel
- sha256 of the tflite file: `{TFLITE_SHA256}`
- Licence: Apache License 2.0 (reproduced below from `{LICENSE_MEMBER}`); no changes to the weights
- Torch module: `models/backbones/blazeface.py` (`BlazeFaceShortRange`, `load_blazeface`)

To regenerate:

```
pip install -r requirements-dev.txt
pip download mediapipe=={MEDIAPIPE_VERSION} --no-deps -d /tmp/mp
python -m models.backbones.convert_blazeface --wheel /tmp/mp/mediapipe-{MEDIAPIPE_VERSION}-*.whl
```

The converter checks each convolution's kind, stride and padding against the torch module and
compares the torch outputs with the TFLite interpreter (ai-edge-litert) to within {TOLERANCE}.

## Licence of MediaPipe

```
{licence.strip()}
```
"""
    path = out_dir / NOTICE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def convert(buf: bytes, licence: str, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    digest = hashlib.sha256(buf).hexdigest()
    if digest != TFLITE_SHA256:
        raise SystemExit(f"tflite sha256 {digest} is not mediapipe {MEDIAPIPE_VERSION}'s {TFLITE_SHA256}")
    state = to_state_dict(*read_tflite(buf))
    model = BlazeFaceShortRange()
    model.load_state_dict(state)
    print(f"torch vs tflite: max |diff| {check_against_tflite(buf, model.eval()):.2g}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUT_NAME
    save_file({k: v.half() for k, v in sorted(state.items())}, str(out),
              metadata={"source": f"mediapipe-{MEDIAPIPE_VERSION}/{TFLITE_MEMBER}", "sha256": TFLITE_SHA256})
    write_notice(out_dir, licence)
    print(f"wrote {out} and {out_dir / NOTICE_NAME}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", type=Path, help=f"the mediapipe {MEDIAPIPE_VERSION} wheel (any platform)")
    src.add_argument("--tflite", type=Path, help="the tflite file itself (then --license is needed)")
    parser.add_argument("--license", type=Path, help="mediapipe's LICENSE file, with --tflite")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    if args.wheel:
        with zipfile.ZipFile(args.wheel) as whl:
            buf, licence = whl.read(TFLITE_MEMBER), whl.read(LICENSE_MEMBER).decode()
    else:
        if not args.license:
            parser.error("--tflite needs --license (mediapipe's Apache-2.0 LICENSE file)")
        buf, licence = args.tflite.read_bytes(), args.license.read_text(encoding="utf-8")
    convert(buf, licence, args.out_dir)


if __name__ == "__main__":
    main()
