"""MER-CLIP (label encoder-guided multimodal emotion recognition on CLIP encoders).

Read top-down as in the paper (Sec. 3):

- Modality encoders (3.1): the profile's frozen encoders give token sequences; here each sequence is
  projected to the label encoder's width (`ModalityProjection`). Embedded profile: Whisper encoder
  tokens (512-d, 20 ms), FER per-frame features (128-d), MiniLM transcript token states (384-d).
  Whisper tokens are mean-pooled to 100 ms (``audio_pool``; the paper's audio tokens are even coarser:
  one per 2-s segment). Paper profile: CLIP image tower on frames (512-d), BERT token states for the transcript, and with
  ``audio_source="clip_mel"`` the CLIP image tower on 2-s log-mel images (``x.extra["clip_mel"]``).
- Cross-modal decoder, CMD (3.2): 3 layers x 8 heads. In every layer the query cross-attends the
  language tokens, then the vision tokens, then the audio tokens (``fusion_order``, L -> V -> A as
  in the paper's ablation winner), each a residual pre-norm multi-head attention, then an FFN.
- Label encoder-guided prediction (3.3): the frozen text encoder (the label encoder, LE) embeds
  every label wrapped in a prompt of 8 learnable context vectors (`LabelPromptLearner`, CoOp-style:
  ``[SOS] V1..V8 <label words> [EOS]``); the prediction is the scaled cosine similarity between the
  CMD's output and these label embeddings (learnable logit scale, CLIP's). CE for single-label
  data, BCE for multi-label (``multi_label``). Any label text can be scored: a new label set only
  needs its prompts encoded, no retraining.

The 'Emotion' query. The paper builds the CMD's initial input from "the output embedding of LE for
the word 'Emotion', combined with a learnable prompt" and uses "8 context vectors to construct the
prompts for label embeddings and emotion queries"; its supplementary '(no word)' ablation uses
"only learnable prompts for the emotion query". We read this as: the emotion query is the LE's
output for the prompt ``V1..V8 Emotion`` built exactly like a label prompt (its own 8 learnable
context vectors), i.e. ONE query token (M = 1) whose 8 context vectors live inside the LE's input,
not 9 separate query tokens. The query therefore starts in the label-embedding space, and the
model's output (the decoded query, LayerNorm + linear) is compared with label embeddings of that
same space. Since the query starts from the LE, editing the LE's word embedding of 'emotion'
changes it (a test checks this).

Missing modalities are never filled with noise: padded / absent tokens are zeroed before the
projection and removed from attention by a key-padding mask; a modality absent for a whole row is
skipped for that row (its residual update is discarded), so video, audio-only and image-only
inputs all work. Per-modality decisions decode the query with that modality alone.

Beside the paper: the face and text backbones' own decisions (FER's, the tuned MiniLM's) are added to
the fused logits and to the visual and text decisions (`models.residual.BackboneResidual`), so the
decoder learns what to change in them rather than to recover them from features.

The label encoder is the backbone's text encoder MODULE (word embeddings + differentiable
``encode_embeds``); it is attached, not owned: it stays frozen, is never saved in the checkpoint
and is not moved by ``.to()``. Torch only: never imports emoweb, gradio or sqlalchemy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.inputs import ModelInput
from models.output import ModelOutput
from models.residual import BackboneResidual

TextEncoder = Callable[[list[str]], torch.Tensor]
MODALITY_AXIS = {"text": "word", "visual": "frame", "audio": "audio_token"}
PAPER_NAMES = {"text": "language", "visual": "vision", "audio": "audio"}


class LabelEncoder(Protocol):
    """What MER-CLIP needs from the text encoder module (models.backbones.text.TransformerTextEncoder)."""

    dim: int

    @property
    def word_embeddings(self) -> nn.Embedding: ...

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def encode_embeds(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class MERCLIPConfig:
    audio_dim: int = 512  # primary audio tokens (Whisper encoder; paper profile: wav2vec 2.0)
    visual_dim: int = 128  # per-frame features (FER; paper profile: CLIP image tower)
    text_token_dim: int = 384  # transcript token states = the label encoder's width = the CMD width
    clip_mel_dim: int = 512  # CLIP image tower on 2-s log-mel images (paper profile)
    audio_source: str = "audio"  # "audio" (x.audio) or "clip_mel" (x.extra["clip_mel"], as published)
    clip_mel_seconds: float = 2.0  # one clip_mel token per 2-s segment (attention axis ticks)
    audio_pool: int = 5  # masked mean over 5 Whisper tokens = 100 ms per audio token (x.audio only)
    layers: int = 3
    heads: int = 8
    ffn_mult: int = 1  # paper: 512-d hidden; x1 FFN keeps the fp16 checkpoint ~13 MB at 384-d
    dropout: float = 0.2
    context_length: int = 8  # learnable context vectors per prompt (labels and the emotion query)
    query_word: str = "Emotion"  # '' = the paper's '(no word)' variant: context vectors only
    fusion_order: list[str] = field(default_factory=lambda: ["text", "visual", "audio"])  # L -> V -> A
    logit_scale_init: float = 1 / 0.07  # CLIP's initial temperature
    logit_scale_max: float = 100.0
    multi_label: bool = False  # BCE over labels (CMU-MOSEI style) instead of CE
    labels: list[str] = field(default_factory=lambda: ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"])


class LabelPromptLearner(nn.Module):
    """Learnable context vectors prepended to a text's word embeddings, encoded by the frozen LE.

    ``[SOS] V1..VM w1..wK [EOS]`` -> ``encoder.encode_embeds`` -> [N, D] L2-normalised. The context is
    shared by all texts, so any label text (a new word, a phrase, a sentence) gets an embedding.
    """

    def __init__(self, context_length: int, width: int):
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(context_length, width) * 0.02)

    def forward(self, encoder: LabelEncoder, texts: list[str]) -> torch.Tensor:
        batch = encoder.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        words = encoder.word_embeddings(ids)  # [N, L, D]
        n, m = len(texts), self.ctx.shape[0]
        ctx = self.ctx.to(words).unsqueeze(0).expand(n, -1, -1)
        embeds = torch.cat([words[:, :1], ctx, words[:, 1:]], dim=1)  # after [SOS]/[CLS]
        mask = torch.cat([mask[:, :1], mask.new_ones(n, m), mask[:, 1:]], dim=1)
        return encoder.encode_embeds(embeds, mask)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over non-overlapping windows of `k` tokens: [B, T, D] -> [B, ceil(T/k), D] + mask."""
    if k <= 1:
        return tokens, mask
    b, t, d = tokens.shape
    pad = (-t) % k
    m = F.pad(mask, (0, pad)).reshape(b, -1, k)
    x = F.pad(tokens.masked_fill(~mask.unsqueeze(-1), 0.0), (0, 0, 0, pad)).reshape(b, -1, k, d)
    count = m.sum(-1, keepdim=True)
    return x.sum(2) / count.clamp(min=1), count.squeeze(-1) > 0


class ModalityProjection(nn.Module):
    """Frozen-encoder tokens -> CMD width; padded/absent tokens are zeroed first (never noise)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens.masked_fill(~mask.unsqueeze(-1), 0.0))


class CrossModalLayer(nn.Module):
    """One CMD layer: the query cross-attends each modality in `order`, then a feed-forward block."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float, modalities: list[str]):
        super().__init__()
        self.attn = nn.ModuleDict({m: nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) for m in modalities})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(width) for m in modalities})
        self.drop = nn.Dropout(dropout)
        self.ffn = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width * ffn_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(width * ffn_mult, width)
        )

    def forward(self, q: torch.Tensor, memories: dict, order: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = {}
        for m in order:
            if m not in memories:
                continue
            tokens, mask, present = memories[m]
            padding = ~mask
            padding[~present, 0] = False  # a row without m attends one zero token; its update is dropped below
            update, w = self.attn[m](self.norm[m](q), tokens, tokens, key_padding_mask=padding, need_weights=True)
            keep = present[:, None, None]
            q = torch.where(keep, q + self.drop(update), q)
            weights[m] = w.masked_fill(~keep, 0.0)  # [B, Q, T], zero on masked tokens and absent rows
        return q + self.drop(self.ffn(q)), weights


class CrossModalDecoder(nn.Module):
    """`layers` x CrossModalLayer; returns the decoded query and per-layer query-to-token weights."""

    def __init__(self, cfg: MERCLIPConfig):
        super().__init__()
        self.order = list(cfg.fusion_order)
        modalities = ["text", "visual", "audio"]
        self.layers = nn.ModuleList(
            CrossModalLayer(cfg.text_token_dim, cfg.heads, cfg.ffn_mult, cfg.dropout, modalities) for _ in range(cfg.layers)
        )
        self.out_norm = nn.LayerNorm(cfg.text_token_dim)

    def forward(self, query: torch.Tensor, memories: dict) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        attention: dict[str, list[torch.Tensor]] = {}
        q = query
        for layer in self.layers:
            q, w = layer(q, memories, self.order)
            for m, a in w.items():
                attention.setdefault(m, []).append(a)
        return self.out_norm(q), attention


class MERCLIP(nn.Module):
    """Modality projections + cross-modal decoder, scored against LE label embeddings by cosine."""

    name = "merclip"
    learns_from_text = True  # the transcript is one of the decoder's memories, trained on text-only rows
    uses_composites = True  # train also on composite face+voice pairs (emoweb/learning/pairs.py)

    def __init__(self, cfg: MERCLIPConfig):
        super().__init__()
        self.config = cfg
        d = cfg.text_token_dim
        audio_in = cfg.clip_mel_dim if cfg.audio_source == "clip_mel" else cfg.audio_dim
        self.projections = nn.ModuleDict({
            "text": ModalityProjection(cfg.text_token_dim, d),
            "visual": ModalityProjection(cfg.visual_dim, d),
            "audio": ModalityProjection(audio_in, d),
        })
        self.decoder = CrossModalDecoder(cfg)
        self.emotion_query = LabelPromptLearner(cfg.context_length, d)
        self.label_prompts = LabelPromptLearner(cfg.context_length, d)
        self.head = nn.Linear(d, d)  # decoded query -> label-embedding space
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        self.visual_residual = BackboneResidual(len(cfg.labels), 2.0)  # the face backbone's decision (models/residual.py)
        self.text_residual = BackboneResidual(len(cfg.labels), modality="text")  # the tuned text backbone's
        self.encode_text: TextEncoder | None = None
        object.__setattr__(self, "label_encoder", None)  # attached, not a submodule: never saved
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- label encoder ---------------------------------------------------------------------------
    def attach_text_encoder(self, encode: TextEncoder | None, module: LabelEncoder | None = None) -> None:
        """`module` = the backbone's text encoder module (needed); `encode` (texts -> embeddings) is kept
        for interface parity with the other models. Passing the module as `encode` also works."""
        if module is None and hasattr(encode, "encode_embeds"):
            module = encode
        if module is not None and getattr(module, "dim", self.config.text_token_dim) != self.config.text_token_dim:
            raise ValueError(f"label encoder width {module.dim} != model width {self.config.text_token_dim}")
        self.encode_text = encode
        object.__setattr__(self, "label_encoder", module)
        self._cache.clear()

    def _encoder(self) -> LabelEncoder:
        if self.label_encoder is None:
            raise RuntimeError("attach_text_encoder(encode, module) first: MER-CLIP needs the text encoder module")
        return self.label_encoder

    def _cached(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Prompt embeddings are recomputed while training (they carry gradients), cached otherwise."""
        if self.training and torch.is_grad_enabled():
            return make()
        if key not in self._cache:
            if len(self._cache) >= 64:  # many custom label sets: keep memory bounded
                self._cache.clear()
            with torch.no_grad():
                self._cache[key] = make()
        return self._cache[key]

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super().load_state_dict(*args, **kwargs)

    def initial_query(self) -> torch.Tensor:
        """The emotion query: LE(``V1..V8 Emotion``) -> [1, 1, D] (one query token)."""
        return self._cached(("query",), lambda: self.emotion_query(self._encoder(), [self.config.query_word]).unsqueeze(0))

    def label_embeddings(self, labels: list[str]) -> torch.Tensor:
        """LE(``V1..V8 <label>``) per label -> [C, D], L2-normalised; any text works."""
        return self._cached(("labels", *labels), lambda: self.label_prompts(self._encoder(), list(labels)))

    def param_groups(self) -> list[dict]:
        """AdamW groups (paper: AdamW, weight decay 1e-3): prompt context faster than the decoder."""
        ctx = [self.emotion_query.ctx, self.label_prompts.ctx]
        residuals = (self.visual_residual, self.text_residual)
        ids = {id(p) for p in ctx + [q for r in residuals for q in r.parameters()]}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": ctx, "lr": 2e-3, "weight_decay": 0.0}, {"params": rest, "lr": 5e-4, "weight_decay": 1e-3},
                *(r.param_group() for r in residuals)]

    def with_backbones(self, logits: torch.Tensor, x: ModelInput) -> torch.Tensor:
        """The fused logits [B, C] plus the face and text backbones' own decisions (models/residual.py)."""
        return self.text_residual(self.visual_residual(logits, x), x)

    # -- modality encoders -----------------------------------------------------------------------
    def memories(self, x: ModelInput) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{modality: (projected tokens [B, T, D], mask [B, T], present [B])} for modalities any row has."""
        sources = {"text": (x.text_tokens, x.text_mask), "visual": (x.visual, x.visual_mask)}
        if self.config.audio_source == "clip_mel":
            if "clip_mel" in x.extra:
                sources["audio"] = (x.extra["clip_mel"], x.extra_mask["clip_mel"])
        else:
            sources["audio"] = pool_tokens(x.audio, x.audio_mask, self.config.audio_pool)
        out = {}
        for m, (tokens, mask) in sources.items():
            present = x.present[m] & mask.any(1)
            if present.any():
                mask = mask & present.unsqueeze(1)
                out[m] = (self.projections[m](tokens, mask), mask, present)
        return out

    def decode(self, x: ModelInput, memories: dict) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """CMD over `memories` -> fused representation [B, D] (normalised) + attention per modality."""
        query = self.initial_query().to(x.audio.device).expand(x.batch_size, -1, -1)
        q, attention = self.decoder(query, memories)
        return F.normalize(self.head(q.mean(1)), dim=-1), attention

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def training_loss(self, x: ModelInput, labels: torch.Tensor, rows: list | None = None) -> torch.Tensor:
        """CE over scaled cosines (single-label), or BCE when `multi_label` (labels [B] ids or [B, C] multi-hot)."""
        z, _ = self.decode(x, self.memories(x))
        logits = self.with_backbones(self.scale() * z @ self.label_embeddings(self.config.labels).to(z).T, x)
        labels = labels.to(logits.device)
        if self.config.multi_label:
            target = labels.float() if labels.dim() == 2 else F.one_hot(labels, logits.shape[1]).float()
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, labels)

    def forward(self, x: ModelInput, labels: list[str] | None = None) -> ModelOutput:
        labels = list(labels or self.config.labels)
        mem = self.memories(x)
        w = self.label_embeddings(labels).to(x.audio.device)
        scale = self.scale()
        z, attention = self.decode(x, mem)
        anything = torch.zeros(x.batch_size, dtype=torch.bool, device=z.device)
        for _, _, present in mem.values():
            anything |= present
        # a row with no audio, frames or transcript decodes the learned query alone: no decision (uniform)
        own = labels == list(self.config.labels)  # the backbone residuals speak the training labels only
        logits = (self.with_backbones(scale * z @ w.T, x) if own else scale * z @ w.T).masked_fill(~anything[:, None], 0.0)
        modality_logits, modality_emb = {}, {}
        for m in mem:  # per-modality decision: the query decoded with that modality alone
            z_m, _ = self.decode(x, {m: mem[m]})
            modality_emb[m], modality_logits[m] = z_m, scale * z_m @ w.T
        for m, residual in (("visual", self.visual_residual), ("text", self.text_residual)):
            if own and m in modality_logits:
                modality_logits[m] = residual(modality_logits[m], x)
        out = ModelOutput(
            probs=logits.softmax(-1),
            labels=labels,
            embedding=z,
            logits=logits,
            modality_probs={m: lg.softmax(-1) for m, lg in modality_logits.items()},
            modality_embeddings=modality_emb,
        )
        for m, per_layer in attention.items():
            axis = "audio_segment" if m == "audio" and self.config.audio_source == "clip_mel" else MODALITY_AXIS[m]
            out.attention[f"cmd_query_to_{axis}"] = (
                torch.stack([a[:, 0] for a in per_layer], dim=1),  # [B, layers, T]
                ("layer", axis),
                {"layer": list(range(1, len(per_layer) + 1)), axis: self._ticks(x, m, mem[m][1])},
            )
        out.similarity["label_text"] = {lab: round(float(v), 4) for lab, v in zip(labels, (z @ w.T)[0].tolist())}
        if self.config.multi_label:
            out.similarity["label_sigmoid"] = {lab: round(float(v), 4) for lab, v in zip(labels, logits[0].sigmoid().tolist())}
        out.notes.append(f"fusion order {' -> '.join(PAPER_NAMES[m] for m in self.decoder.order)}; present: {', '.join(mem) or 'none'}")
        if not anything[0]:
            out.notes.append("no audio, frames or transcript: no decision (uniform probabilities)")
        return out

    def _ticks(self, x: ModelInput, m: str, mask: torch.Tensor) -> list[list]:
        if m == "text":
            return x.words
        if m == "visual":
            return x.frame_times
        if self.config.audio_source == "clip_mel":
            return [[round(i * self.config.clip_mel_seconds, 3) for i in range(int(n))] for n in mask.sum(1).tolist()]
        k = max(1, self.config.audio_pool)
        return [times[::k] for times in x.audio_times]
