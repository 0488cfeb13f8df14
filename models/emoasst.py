"""EmoAsst (Wang & Yang, 2024): text-guided transfer of frozen visual and acoustic encoders.

Read top-down as in the paper:
- `VisualFusionModule`: one transformer encoder layer refines each frame feature on its own, then two
  decoder layers whose M queries (trainable embeddings + a text feature) cross-attend over the frames.
- `AuditoryAdapter`: three transformer layers over the frozen audio tokens, into the text space.
- Training: supervised contrastive loss between modality embeddings and prompt-text embeddings, with
  the six prompt formats of the paper drawn at random per sample.
- Inference: zero-shot classifier from label prompts (+ the joint few-shot cache in `cache.py`).
Both adapters output L2-normalised vectors in the frozen text encoder's space.

One departure, for the caregiver cache (`EmoAsstConfig.audio_backbone_key`): next to the adapters'
representations (the paper's keys), the frozen audio encoder's mean token is a second audio key,
averaged with the others like the joint cache's modalities. The adapter is trained to ignore who is
speaking; a cache of one family's own clips gains from exactly what it ignores. And a second, for
what is said: with the training labels, the text decision is the profile's tuned text classifier's
(`EmoAsst.text_decision`), not the frozen sentence embedding against the label prompts.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.inputs import ModelInput, masked_mean
from models.output import ModelOutput
from models.residual import BackboneResidual, backbone_decision

TextEncoder = Callable[[list[str]], torch.Tensor]  # texts -> [B, D] normalised sentence embeddings

PROMPT_FORMATS: tuple[str, ...] = (
    "a person speaking with a {emotion} emotion.",
    "{speaker} is speaking, and the face shows {emotion}.",
    'someone says "{utterance}" with {emotion}.',
    "a {emotion} face of {speaker}.",
    '{speaker} says "{utterance}" in a {emotion} voice.',
    "the face of a person who feels {emotion} while speaking.",
)
ZERO_SHOT_FORMATS = tuple(f for f in PROMPT_FORMATS if "{speaker}" not in f and "{utterance}" not in f)


def emotion_prompt(label: str, speaker: str = "", utterance: str = "", rng: random.Random | None = None) -> str:
    """One of the six formats at random; the label is always present, speaker/utterance when known."""
    rng = rng or random
    usable = [f for f in PROMPT_FORMATS if ("{speaker}" not in f or speaker) and ("{utterance}" not in f or utterance)]
    return rng.choice(usable).format(emotion=label, speaker=speaker, utterance=utterance)


@dataclass
class EmoAsstConfig:
    visual_dim: int = 128
    audio_dim: int = 512
    text_dim: int = 384  # the adapters' width: the text encoder's (paper: 512)
    ffn_mult: int = 2  # paper: 512-d with FFN 2048 (x4); x2 keeps the shipped fp16 checkpoint under 20 MB
    heads: int = 8
    num_queries: int = 8  # M
    audio_layers: int = 3
    # The paper trains the AA at 1e-4 on MELD-scale data; on RAVDESS's 840 clips that stalls within
    # the epoch budget, so we use 5e-4 (measured on the dev speakers only).
    audio_lr: float = 5e-4
    audio_pool: int = 8  # average 20-ms tokens in groups of 8 (160 ms): 8x cheaper adapter, prosody intact
    dropout: float = 0.1
    temperature: float = 0.07  # SupCon temperature
    logit_scale: float = 100.0  # CLIP scale of the zero-shot classifier
    prompt_query_prob: float = 0.5  # training: queries see the emotion prompt this often, else the utterance
    # Training also applies cross-entropy to the zero-shot classifier (the label-prompt embeddings the
    # model is scored against at inference), weighted by this. SupCon alone pulls embeddings towards
    # the *training* prompts (speaker, utterance, cue words), never towards the label prompts used to
    # decide; on unseen RAVDESS speakers, SupCon+CE gave 73.8 % audio accuracy vs 63.3 % for SupCon alone.
    ce_weight: float = 1.0
    # Also key the few-shot cache by the frozen audio encoder's mean token ("audio_backbone"). Chosen on
    # the dev speakers of the checkpoint trained with a dev split: K=4 clips per class of the same
    # speaker lifted accuracy by +10.0 points with the adapter key alone and +14.7 with both (K=1:
    # -4.3 vs +4.0), the same alpha/beta search for both.
    audio_backbone_key: bool = True
    # Which audio token sequence the Auditory Adapter reads: "audio" (the profile's primary encoder, as
    # the paper profile's wav2vec 2.0) or another key the profile provides (`ModelInput.extra`), e.g. the
    # embedded profile's "whisper_layer4". Cards written before this field read "audio".
    audio_source: str = "audio"
    labels: list[str] = field(default_factory=lambda: ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"])


class VisualFusionModule(nn.Module):
    """Per-frame encoder layer + 2 decoder layers with text-conditioned queries -> visual adapter."""

    def __init__(self, cfg: EmoAsstConfig):
        super().__init__()
        d = cfg.text_dim
        self.input_proj = nn.Linear(cfg.visual_dim, d)
        self.frame_encoder = nn.TransformerEncoderLayer(d, cfg.heads, d * cfg.ffn_mult, cfg.dropout, batch_first=True, norm_first=True)
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(d, cfg.heads, d * cfg.ffn_mult, cfg.dropout, batch_first=True, norm_first=True)
            for _ in range(2)
        )
        self.query_embed = nn.Parameter(torch.randn(cfg.num_queries, d) * 0.02)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.visual_adapter = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.text_dim))
        self._attn: torch.Tensor | None = None

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, n, _ = frames.shape
        x = self.input_proj(frames).reshape(b * n, 1, -1)
        x = self.frame_encoder(x).reshape(b, n, -1)  # each frame refined independently
        q = self.query_embed.unsqueeze(0) + self.text_proj(text).unsqueeze(1)
        for layer in self.decoder:
            q = layer(q, x, memory_key_padding_mask=~mask)
        self._attn = None if self.training else self._cross_attention(q, x, mask)
        return F.normalize(self.visual_adapter(q.mean(1)), dim=-1)

    @torch.no_grad()
    def _cross_attention(self, q: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Query-to-frame weights of the last decoder layer, recomputed for display ([B, M, N])."""
        layer = self.decoder[-1]
        _, w = layer.multihead_attn(layer.norm2(q), memory, memory, key_padding_mask=~mask, need_weights=True)
        return w


class AuditoryAdapter(nn.Module):
    """Three transformer layers over frozen audio tokens, pooled over real frames, into the text space."""

    def __init__(self, cfg: EmoAsstConfig):
        super().__init__()
        d = cfg.text_dim
        self.pool = cfg.audio_pool
        self.input_norm = nn.LayerNorm(cfg.audio_dim)  # Whisper features have a few huge dimensions
        self.input_proj = nn.Linear(cfg.audio_dim, d)
        self.pos = nn.Parameter(torch.randn(1, 1500 // cfg.audio_pool, d) * 0.02)  # one 30-s window
        layer = nn.TransformerEncoderLayer(d, cfg.heads, d * cfg.ffn_mult, cfg.dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.audio_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.text_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens, mask = pool_tokens(tokens, mask, self.pool)
        t = min(tokens.shape[1], self.pos.shape[1])
        x = self.input_proj(self.input_norm(tokens[:, :t])) + self.pos[:, :t]
        x = self.layers(x, src_key_padding_mask=~mask[:, :t])
        return F.normalize(self.out(masked_mean(x, mask[:, :t])), dim=-1)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average over groups of k tokens; a group is real if any of its tokens is."""
    if k <= 1:
        return tokens, mask
    b, t, d = tokens.shape
    pad = (-t) % k
    tokens = F.pad(tokens * mask.unsqueeze(-1), (0, 0, 0, pad)).reshape(b, -1, k, d)
    m = F.pad(mask, (0, pad)).reshape(b, -1, k).float()
    pooled = tokens.sum(2) / m.sum(2, keepdim=True).clamp(min=1.0)
    return pooled, m.sum(2) > 0


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) over normalised `features` [2B, D].

    For each anchor i: -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) ).
    Anchors without positives are skipped.
    """
    sim = features @ features.T / temperature
    n = features.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    n_pos = pos.sum(1)
    valid = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[valid] / n_pos[valid])
    return per_anchor.mean()


class EmoAsst(nn.Module):
    """Visual Fusion Module + Auditory Adapter, scored against label prompts in the text space."""

    name = "emoasst"
    learns_from_text = False  # its text decision is the text backbone's own (or zero-shot): nothing to train
    single_modality_batches = True  # each branch's SupCon needs a full batch of its own modality

    def __init__(self, cfg: EmoAsstConfig):
        super().__init__()
        self.config = cfg
        self.vfm = VisualFusionModule(cfg)
        self.auditory_adapter = AuditoryAdapter(cfg)
        # the face backbone's decision beside the VFM's (models/residual.py), in the classifier's logit units
        self.visual_residual = BackboneResidual(len(cfg.labels), cfg.logit_scale / 20)
        self.encode_text: TextEncoder | None = None  # the frozen backbone's, attached by the caller
        self._label_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._prompt_cache: dict[str, torch.Tensor] = {}

    def attach_text_encoder(self, encode: TextEncoder, module: torch.nn.Module | None = None) -> None:
        """`module` (the text encoder module) is accepted for interface parity and unused here."""
        self.encode_text = encode
        self._label_cache.clear()
        self._prompt_cache.clear()

    def param_groups(self) -> list[dict]:
        """AdamW groups: 1e-3 for the Visual Fusion Module (the paper's), `audio_lr` for the Auditory Adapter,
        the backbone residual's own."""
        return [
            {"params": self.vfm.parameters(), "lr": 1e-3},
            {"params": self.auditory_adapter.parameters(), "lr": self.config.audio_lr},
            self.visual_residual.param_group(),
        ]

    def branches(self) -> dict[str, nn.Module]:
        """Independent per-modality parts: the trainer early-stops each on its own dev score."""
        return {"visual": nn.ModuleList([self.vfm, self.visual_residual]), "audio": self.auditory_adapter}

    def label_weights(self, labels: list[str]) -> torch.Tensor:
        """Zero-shot classifier: per label, the mean of its prompt-ensemble embeddings, normalised ([C, D])."""
        key = tuple(labels)
        if key not in self._label_cache:
            if self.encode_text is None:
                raise RuntimeError("attach_text_encoder() first: label prompts need the text encoder")
            prompts = [f.format(emotion=label) for label in labels for f in ZERO_SHOT_FORMATS]
            with torch.no_grad():  # the text encoder is frozen; the cached classifier must hold no graph
                emb = self.encode_text(prompts).reshape(len(labels), len(ZERO_SHOT_FORMATS), -1).mean(1)
            self._label_cache[key] = F.normalize(emb, dim=-1)
        return self._label_cache[key]

    def embed(self, x: ModelInput, query_text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-modality embeddings in the text space, only for the rows where that modality is present."""
        out: dict[str, torch.Tensor] = {}
        text = x.text if query_text is None else query_text
        branches = {
            "visual": lambda rows: self.vfm(x.visual[rows], x.visual_mask[rows], text[rows]),
            "audio": lambda rows: self.auditory_adapter(*(t[rows] for t in self._audio_tokens(x))),
        }
        for modality, branch in branches.items():
            rows = x.present[modality]
            if rows.any():  # run the branch only on the rows that have the modality (zeros elsewhere)
                z = branch(rows)
                out[modality] = z.new_zeros(x.batch_size, z.shape[1]).index_copy(0, rows.nonzero().squeeze(1), z)
        return out

    def _audio_tokens(self, x: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The token sequence and mask named by `audio_source`."""
        source = self.config.audio_source
        if source == "audio":
            return x.audio, x.audio_mask
        if source not in x.extra:
            raise ValueError(f"EmoAsst reads audio tokens {source!r}, which this backbone profile does not provide "
                             f"(it has: audio{''.join(', ' + k for k in sorted(x.extra))})")
        return x.extra[source], x.extra_mask[source] & x.present["audio"].unsqueeze(1)

    def prompt_embeddings(self, rows: list, labels: list[str]) -> torch.Tensor:
        """Encode one random emotion prompt per training row (`rows` expose speaker and text)."""
        prompts = [emotion_prompt(label, r.speaker.replace("_", " "), r.text) for r, label in zip(rows, labels)]
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:  # the prompt space is finite (label x format x speaker x sentence): encode each once
            with torch.no_grad():
                self._prompt_cache.update(zip(missing, self.encode_text(missing).cpu()))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def training_loss(self, x: ModelInput, labels: torch.Tensor, rows: list) -> torch.Tensor:
        """SupCon over {modality embeddings, prompt embeddings} for each present modality, plus
        `ce_weight` x cross-entropy of the zero-shot classifier on that modality."""
        names = [self.config.labels[int(i)] for i in labels]
        classifier = self.config.logit_scale * self.label_weights(self.config.labels).to(x.audio.device)
        prompt_emb = self.prompt_embeddings(rows, names).to(x.audio.device)
        use_prompt = torch.rand(x.batch_size, 1, device=prompt_emb.device) < self.config.prompt_query_prob
        query = torch.where(use_prompt, prompt_emb, x.text)
        emb = self.embed(x, query_text=query)
        total = prompt_emb.new_zeros(())
        for modality, z in emb.items():
            keep = x.present[modality]
            feats = torch.cat([z[keep], prompt_emb[keep]])
            total = total + supcon_loss(feats, torch.cat([labels[keep], labels[keep]]), self.config.temperature)
            if self.config.ce_weight:
                logits = z @ classifier.T
                if modality == "visual":
                    logits = self.visual_residual(logits, x)
                total = total + self.config.ce_weight * F.cross_entropy(logits[keep], labels[keep])
        return total

    def forward(self, x: ModelInput, labels: list[str] | None = None) -> ModelOutput:
        labels = labels or self.config.labels
        w = self.label_weights(labels).to(x.audio.device)
        emb = self.embed(x)
        scale = self.config.logit_scale
        modality_logits = {m: scale * z @ w.T for m, z in emb.items()}
        if "visual" in modality_logits and list(labels) == list(self.config.labels):
            modality_logits["visual"] = self.visual_residual(modality_logits["visual"], x)
        if x.present["text"].any():
            modality_logits["text"] = self.text_decision(x, scale * F.normalize(x.text, dim=-1) @ w.T, labels)
        fused, fused_emb = self._fuse(x, modality_logits, emb)
        out = ModelOutput(
            probs=fused.softmax(-1),
            labels=list(labels),
            embedding=fused_emb,
            modality_probs={m: l.softmax(-1) for m, l in modality_logits.items()},
            logits=fused,
            modality_embeddings=emb | self._backbone_keys(x),
        )
        if "visual" in emb and self.vfm._attn is not None:
            out.attention["vfm_query_to_frame"] = (self.vfm._attn, ("query", "frame"), {"frame": x.frame_times})
        out.similarity["label_text"] = {lab: float(v) for lab, v in zip(labels, (fused / scale)[0].tolist())}
        return out

    def text_decision(self, x: ModelInput, zero_shot: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """[B, C]: the text backbone's own decision (its log-probabilities) on the rows that have one and
        for the training labels; elsewhere the frozen sentence embedding against the label prompts.

        Why: EmoAsst trains nothing on text, and its zero-shot decision reads the sentence embedding,
        which tells paraphrases apart rather than feelings (23% on MELD's dev file); the profile's tuned
        text classifier (`models.backbones.text_emotion`) reads what is said (58%)."""
        tuned = backbone_decision(x, "text") if list(labels) == list(self.config.labels) else None
        if tuned is None or tuned[0].shape[-1] != zero_shot.shape[-1]:
            return zero_shot
        logp, rows = tuned
        return torch.where(rows.unsqueeze(1), logp.to(zero_shot), zero_shot)

    def _backbone_keys(self, x: ModelInput) -> dict[str, torch.Tensor]:
        """The frozen audio encoder's mean token as an extra cache key (unit rows; zeros without audio)."""
        rows = x.present["audio"]
        if not self.config.audio_backbone_key or not rows.any():
            return {}
        mean = F.normalize(masked_mean(x.audio, x.audio_mask), dim=-1)
        return {"audio_backbone": mean * rows.unsqueeze(1).to(mean.dtype)}

    def _fuse(self, x: ModelInput, logits: dict[str, torch.Tensor], emb: dict[str, torch.Tensor]):
        """Average of the audio and visual decisions present per row (the paper's joint classifier).

        Text is shown but not fused: EmoAsst classifies from face and voice. A clip with neither falls
        back to the text decision, so it still gets an answer.
        """
        b = x.batch_size
        c = next(iter(logits.values())).shape[1] if logits else len(self.config.labels)
        total = torch.zeros(b, c, device=x.audio.device)
        count = torch.zeros(b, 1, device=x.audio.device)
        emb_sum = torch.zeros(b, self.config.text_dim, device=x.audio.device)
        for m in ("audio", "visual"):
            if m in logits:
                p = x.present[m].unsqueeze(1).float()
                total, count, emb_sum = total + logits[m] * p, count + p, emb_sum + emb[m] * p
        none = count.squeeze(1) == 0
        if none.any() and "text" in logits:
            total[none], count[none] = logits["text"][none], 1.0
            emb_sum[none] = F.normalize(x.text[none], dim=-1)
        return total / count.clamp(min=1), F.normalize(emb_sum, dim=-1)
