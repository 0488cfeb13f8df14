"""Foal-Net (Li et al., 2024): modal fusion enhanced by audio-video alignment and emotion label matching.

Read top-down as in the paper (arXiv 2408.09438, Sec. 2):

- Audio and video projections (`ModalityProjection`): frozen encoder tokens -> a common 512-d space
  (LayerNorm, linear, GELU, dropout 0.5 as published). Embedded profile: Whisper encoder tokens
  (``x.audio``, 512-d, 20 ms) and FER per-frame features (``x.visual``, 128-d). Paper profile: WavLM
  tokens (``x.extra["wavlm"]`` with ``audio_source="wavlm"``) and CLIP frame features (``x.visual``,
  512-d). Audio tokens are first average-pooled in time by ``audio_stride`` (4 x 20 ms = 80 ms; speed).
- Audio-video emotion alignment, AVEL (`alignment_loss`): mean-pool each modality's projected tokens,
  L2-normalise, similarity / temperature between every audio and every video embedding of the batch;
  contrastive in both directions with EVERY same-label pair positive (multi-positive InfoNCE).
- Emotion label matching, MEM (`EmotionLabelMatching`): a binary task on (audio, video) pairs fused by
  the cross-attention module. Positives: the real pairs; negatives: for each positive, a different-
  label video for its audio and a different-label audio for its video, the hard negatives, sampled
  from softmax(similarity / temperature) with same-label partners masked out (`sample_hard_negatives`).
- Modal fusion (`CrossAttentionFusion`): 2 layers x 4 heads of bidirectional cross-attention (audio
  attends video, video attends audio), average pooling of both streams, concatenation, classifier.

All three losses train together (`training_loss`): ``cls_weight * L_cls + align_weight * L_AVEL +
match_weight * L_MEM`` (defaults 1, 0.5, 0.5). The public code trains only the classification loss;
``align_weight = match_weight = 0`` reproduces that as an ablation.

Missing modalities. Foal-Net is audio-visual: its fusion needs both. Nothing is ever imputed. A row
with only audio (or only video) is answered by that modality's head (LayerNorm + linear on the
pooled, aligned projection, trained with the same CE on every row that has the modality), and the
output says so in ``notes``; its ``embedding`` (the fused cache key) is a zero row, which the few-shot
cache reads as "no fused key" and matches on ``modality_embeddings`` instead. A row with neither gets
uniform probabilities and a note. The transcript is not used.

Labels. A closed-set classifier over ``config.labels`` (its training labels). Asked for a label set,
it answers over the requested labels it knows (softmax renormalised over them) and names the
unknown ones in ``notes``; if it knows none of them, it answers over its own labels.

Torch only: never imports emoweb, gradio or sqlalchemy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.inputs import ModelInput, masked_mean
from models.residual import BackboneResidual
from models.output import ModelOutput

LABELS7 = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


@dataclass
class FoalNetConfig:
    audio_dim: int = 512  # x.audio: Whisper encoder (embedded), wav2vec 2.0 (paper profile)
    visual_dim: int = 128  # x.visual: FER per-frame features (embedded), CLIP frames (paper, 512)
    wavlm_dim: int = 768  # x.extra["wavlm"] when audio_source == "wavlm" (paper: WavLM; base 768, large 1024)
    audio_source: str = "audio"  # "audio" (x.audio) or "wavlm" (x.extra["wavlm"], as published)
    wavlm_hop: float = 0.02  # seconds per WavLM frame (attention axis ticks)
    width: int = 512  # the common space (paper: 512 neurons)
    heads: int = 4
    fusion_layers: int = 2
    dropout: float = 0.5  # projection dropout (paper)
    attn_dropout: float = 0.1
    audio_stride: int = 4  # average-pool 20-ms audio tokens by this factor before projecting (80 ms)
    temperature: float = 0.07  # alignment similarity / temperature (also the hard-negative softmax)
    cls_weight: float = 1.0  # fused classifier CE + modality heads' CE
    modality_head_weight: float = 1.0  # weight of the per-modality heads' CE inside L_cls
    align_weight: float = 0.5  # AVEL
    match_weight: float = 0.5  # MEM
    labels: list[str] = field(default_factory=lambda: list(LABELS7))


# -- helpers ---------------------------------------------------------------------------------------
def pool_time(x: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling over windows of `stride` tokens ([B, T, D] -> [B, ceil(T/s), D])."""
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding (even NaN) never leaks
    if stride <= 1:
        return x, mask
    b, t, d = x.shape
    pad = (-t) % stride
    x = F.pad(x, (0, 0, 0, pad)).reshape(b, -1, stride, d)
    m = F.pad(mask, (0, pad)).reshape(b, -1, stride)
    count = m.sum(-1)
    return x.sum(2) / count.clamp(min=1).unsqueeze(-1).to(x.dtype), count > 0


def alignment_loss(z_a: torch.Tensor, z_v: torch.Tensor, y_a: torch.Tensor, y_v: torch.Tensor, temperature: float) -> torch.Tensor:
    """AVEL: contrastive across modalities, every same-label (audio, video) pair positive.

    ``z_a`` [Na, D] and ``z_v`` [Nv, D] are L2-normalised; S = z_a z_v^T / t. For each audio anchor i:
    ``-1/|P(i)| sum_{p in P(i)} log softmax_j(S_ij)_p`` over the videos, and the same for each video
    anchor over the audios; the loss is the mean of the two directions. Anchors with no positive skip.
    """
    logits = z_a @ z_v.T / temperature
    pos = y_a.unsqueeze(1) == y_v.unsqueeze(0)
    return 0.5 * (_multi_positive_ce(logits, pos) + _multi_positive_ce(logits.T, pos.T))


def _multi_positive_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    valid = pos.any(1)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    logp = logits.log_softmax(1)
    per_anchor = -(logp.masked_fill(~pos, 0.0).sum(1)[valid] / pos.sum(1)[valid])
    return per_anchor.mean()


@torch.no_grad()
def sample_hard_negatives(
    sim: torch.Tensor, anchor_labels: torch.Tensor, candidate_labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each anchor, a candidate index drawn from softmax(sim) over candidates of ANOTHER label.

    ``sim`` [A, C] (already divided by the temperature). Same-label candidates are masked out, so a
    hard negative never shares its anchor's label; -1 where every candidate shares it.
    """
    allowed = anchor_labels.unsqueeze(1) != candidate_labels.unsqueeze(0)
    out = torch.full((sim.shape[0],), -1, dtype=torch.long, device=sim.device)
    has = allowed.any(1)
    if bool(has.any()):
        probs = sim[has].float().masked_fill(~allowed[has], float("-inf")).softmax(-1)
        out[has] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return out


# -- the paper's parts -----------------------------------------------------------------------------
class ModalityProjection(nn.Module):
    """Audio / video projection to the common space; padded tokens are zeroed before and after."""

    def __init__(self, in_dim: int, width: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.proj(tokens.masked_fill(~mask.unsqueeze(-1), 0.0))
        return y.masked_fill(~mask.unsqueeze(-1), 0.0)


class BidirectionalCrossAttention(nn.Module):
    """One fusion layer: audio attends video and video attends audio (both from the previous layer)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.audio_to_video = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.video_to_audio = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_a = nn.LayerNorm(width)
        self.norm_v = nn.LayerNorm(width)

    def forward(self, a, am, v, vm, need_weights: bool = False):
        na, nv = self.norm_a(a), self.norm_v(v)
        da, wa = self.audio_to_video(na, nv, nv, key_padding_mask=~vm, need_weights=need_weights)
        dv, wv = self.video_to_audio(nv, na, na, key_padding_mask=~am, need_weights=need_weights)
        return a + da, v + dv, wa, wv  # wa [P, T, N] (audio queries over frames), wv [P, N, T]


class CrossAttentionFusion(nn.Module):
    """`fusion_layers` x bidirectional cross-attention, then average pooling of each stream + concatenation."""

    def __init__(self, cfg: FoalNetConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            BidirectionalCrossAttention(cfg.width, cfg.heads, cfg.attn_dropout) for _ in range(cfg.fusion_layers)
        )
        self.out_norm = nn.LayerNorm(cfg.width)

    def forward(self, a, am, v, vm, need_weights: bool = False):
        """-> fused [P, 2 * width], and per layer (audio-to-video [P, T, N], video-to-audio [P, N, T])."""
        weights = []
        for layer in self.layers:
            a, v, wa, wv = layer(a, am, v, vm, need_weights)
            if need_weights:  # zero the rows of padded queries: only real tokens are shown
                weights.append((wa * am.unsqueeze(-1), wv * vm.unsqueeze(-1)))
        fused = torch.cat([masked_mean(self.out_norm(a), am), masked_mean(self.out_norm(v), vm)], dim=-1)
        return fused, weights


class EmotionLabelMatching(nn.Module):
    """MEM: does this (audio, video) pair carry the same emotion? A 2-way head on the fused pair."""

    def __init__(self, cfg: FoalNetConfig):
        super().__init__()
        self.head = nn.Linear(2 * cfg.width, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head(fused)


class FoalNet(nn.Module):
    """Projections + AVEL + MEM + cross-attention fusion + pooled/concatenated classifier."""

    name = "foalnet"
    learns_from_text = False  # it reads no text
    uses_composites = True  # train also on composite face+voice pairs (emoweb/learning/pairs.py)

    def __init__(self, cfg: FoalNetConfig):
        super().__init__()
        if cfg.audio_source not in ("audio", "wavlm"):
            raise ValueError(f"audio_source must be 'audio' or 'wavlm', not {cfg.audio_source!r}")
        self.config = cfg
        audio_in = cfg.wavlm_dim if cfg.audio_source == "wavlm" else cfg.audio_dim
        self.audio_projection = ModalityProjection(audio_in, cfg.width, cfg.dropout)
        self.video_projection = ModalityProjection(cfg.visual_dim, cfg.width, cfg.dropout)
        self.fusion = CrossAttentionFusion(cfg)
        self.label_matching = EmotionLabelMatching(cfg)
        self.classifier = nn.Linear(2 * cfg.width, len(cfg.labels))
        self.modality_heads = nn.ModuleDict({
            m: nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, len(cfg.labels))) for m in ("audio", "visual")
        })
        self.visual_residual = BackboneResidual(len(cfg.labels))  # the face backbone's decision (models/residual.py)
        self.last_losses: dict[str, float] = {}  # the latest training_loss's parts (for logs and tests)

    def attach_text_encoder(self, encode=None, module=None) -> None:
        """Interface parity: Foal-Net uses neither the transcript nor label texts."""

    def param_groups(self) -> list[dict]:
        """The reference's learning rate, 1e-4 (AdamW), for every parameter but the backbone residual's."""
        ids = {id(p) for p in self.visual_residual.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": 1e-4}, self.visual_residual.param_group()]

    # -- projections -----------------------------------------------------------------------------
    def encode(self, x: ModelInput) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{audio|visual: (projected tokens [B, L, W], mask [B, L], present [B], aligned embedding [B, W])}."""
        if self.config.audio_source == "wavlm":
            if "wavlm" not in x.extra:
                raise ValueError("Foal-Net was built with audio_source='wavlm' but the input has no WavLM tokens "
                                 "(x.extra['wavlm']): use the paper backbone profile")
            audio, audio_mask = x.extra["wavlm"], x.extra_mask["wavlm"]
        else:
            audio, audio_mask = x.audio, x.audio_mask
        audio_mask = audio_mask & x.present["audio"].unsqueeze(1)
        audio, audio_mask = pool_time(audio, audio_mask, self.config.audio_stride)
        visual_mask = x.visual_mask & x.present["visual"].unsqueeze(1)
        out = {}
        for m, proj, tokens, mask in (
            ("audio", self.audio_projection, audio, audio_mask),
            ("visual", self.video_projection, x.visual, visual_mask),
        ):
            present = mask.any(1)
            z = proj(tokens, mask)
            emb = F.normalize(masked_mean(z, mask), dim=-1) * present.unsqueeze(1)  # absent rows: zeros
            out[m] = (z, mask, present, emb)
        return out

    def modality_logits(self, m: str, z: torch.Tensor, mask: torch.Tensor, x: ModelInput) -> torch.Tensor:
        """One modality's own decision [B, C] from its projected tokens; the visual one keeps the face
        backbone's decision as a residual."""
        logits = self.modality_heads[m](masked_mean(z, mask))
        return self.visual_residual(logits, x) if m == "visual" else logits

    def fuse_pairs(self, enc: dict, ia: torch.Tensor, iv: torch.Tensor, need_weights: bool = False):
        """Cross-attention fusion of audio rows `ia` with video rows `iv` (pairwise) -> [P, 2W], weights."""
        za, am = enc["audio"][0][ia], enc["audio"][1][ia]
        zv, vm = enc["visual"][0][iv], enc["visual"][1][iv]
        return self.fusion(za, am, zv, vm, need_weights)

    # -- training --------------------------------------------------------------------------------
    def matching_pairs(self, enc: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """MEM pairs: (audio rows, video rows, targets 1 = same emotion, number of positives).

        Positives are the rows with both modalities (a real or composite clip). A batch without any
        gets same-label (audio row, image row) pairs formed in the batch, exactly as composites are
        formed at feature level. For every positive, two hard negatives: its audio with a sampled
        different-label video, and its video with a sampled different-label audio.
        """
        pa, pv = enc["audio"][2], enc["visual"][2]
        dev = y.device
        both = (pa & pv).nonzero().squeeze(1)
        if both.numel():
            pos_a, pos_v = both, both
        else:
            audio_rows, video_rows = pa.nonzero().squeeze(1), pv.nonzero().squeeze(1)
            pa_list, pv_list = [], []
            for i in audio_rows.tolist():
                same = video_rows[y[video_rows] == y[i]]
                if same.numel():
                    pa_list.append(i)
                    pv_list.append(int(same[torch.randint(same.numel(), (1,))]))
            pos_a = torch.tensor(pa_list, dtype=torch.long, device=dev)
            pos_v = torch.tensor(pv_list, dtype=torch.long, device=dev)
        if pos_a.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty, empty, 0
        audio_rows, video_rows = pa.nonzero().squeeze(1), pv.nonzero().squeeze(1)
        za, zv = enc["audio"][3], enc["visual"][3]
        t = self.config.temperature
        neg_v = sample_hard_negatives(za[pos_a] @ zv[video_rows].T / t, y[pos_a], y[video_rows])
        neg_a = sample_hard_negatives(zv[pos_v] @ za[audio_rows].T / t, y[pos_v], y[audio_rows])
        keep_v, keep_a = neg_v >= 0, neg_a >= 0
        ia = torch.cat([pos_a, pos_a[keep_v], audio_rows[neg_a[keep_a]]])
        iv = torch.cat([pos_v, video_rows[neg_v[keep_v]], pos_v[keep_a]])
        n_pos = pos_a.numel()
        targets = torch.cat([torch.ones(n_pos, dtype=torch.long, device=dev), torch.zeros(ia.numel() - n_pos, dtype=torch.long, device=dev)])
        return ia, iv, targets, n_pos

    def training_loss(self, x: ModelInput, labels: torch.Tensor, rows: list | None = None) -> torch.Tensor:
        """cls_weight * L_cls + align_weight * L_AVEL + match_weight * L_MEM (parts in `last_losses`)."""
        cfg = self.config
        y = labels.to(x.audio.device)
        enc = self.encode(x)
        zero = x.audio.new_zeros(())
        # classification: per-modality heads on every row with the modality
        head_ce = zero
        for m in ("audio", "visual"):
            z, mask, present, _ = enc[m]
            if bool(present.any()):
                head_ce = head_ce + F.cross_entropy(self.modality_logits(m, z, mask, x)[present], y[present])
        # AVEL over every audio row x every video row of the batch
        pa, pv = enc["audio"][2], enc["visual"][2]
        align = zero
        if cfg.align_weight and bool(pa.any()) and bool(pv.any()):
            align = alignment_loss(enc["audio"][3][pa], enc["visual"][3][pv], y[pa], y[pv], cfg.temperature)
        # MEM pairs and the fused classifier share one fusion pass
        fused_ce, match = zero, zero
        n_pos = n_neg = 0
        if cfg.match_weight:
            ia, iv, targets, n_pos = self.matching_pairs(enc, y)
        else:
            ia = iv = (pa & pv).nonzero().squeeze(1)
            targets, n_pos = torch.ones_like(ia), ia.numel()
        n_neg = int(targets.numel() - n_pos)
        if ia.numel():
            fused, _ = self.fuse_pairs(enc, ia, iv)
            fused_ce = F.cross_entropy(self.classifier(fused[:n_pos]), y[ia[:n_pos]])
            if cfg.match_weight and n_neg:
                match = F.cross_entropy(self.label_matching(fused), targets)
        cls = fused_ce + cfg.modality_head_weight * head_ce
        total = cfg.cls_weight * cls + cfg.align_weight * align + cfg.match_weight * match
        self.last_losses = {
            **{k: float(v.detach()) for k, v in (("cls", cls), ("fused_ce", fused_ce), ("head_ce", head_ce), ("align", align),
                                                 ("match", match), ("total", total))},
            "match_pos": n_pos, "match_neg": n_neg,
        }
        return total

    # -- inference -------------------------------------------------------------------------------
    def _label_index(self, labels: list[str] | None, notes: list[str]) -> tuple[list[str], list[int]]:
        own = list(self.config.labels)
        if not labels:
            return own, list(range(len(own)))
        known = [lab for lab in labels if lab in own]
        unknown = [lab for lab in labels if lab not in own]
        if unknown:
            msg = f"Foal-Net is a closed-set classifier over its training labels ({', '.join(own)}); not scored: {', '.join(unknown)}"
            if not known:
                notes.append(msg + "; answered over its own labels instead")
                return own, list(range(len(own)))
            notes.append(msg + "; probabilities are over the known requested labels")
        return known, [own.index(lab) for lab in known]

    def forward(self, x: ModelInput, labels: list[str] | None = None) -> ModelOutput:
        cfg = self.config
        notes: list[str] = []
        out_labels, idx = self._label_index(labels, notes)
        b, dev = x.batch_size, x.audio.device
        enc = self.encode(x)
        pa, pv = enc["audio"][2], enc["visual"][2]
        both = pa & pv
        c = len(cfg.labels)
        logits = torch.zeros(b, c, device=dev)
        modality_logits = {}
        for m in ("audio", "visual"):
            z, mask, present, _ = enc[m]
            if bool(present.any()):
                modality_logits[m] = self.modality_logits(m, z, mask, x)
        if "audio" in modality_logits:
            logits = torch.where((pa & ~pv).unsqueeze(1), modality_logits["audio"], logits)
        if "visual" in modality_logits:
            logits = torch.where((pv & ~pa).unsqueeze(1), modality_logits["visual"], logits)
        embedding = torch.zeros(b, 2 * cfg.width, device=dev)
        rows = both.nonzero().squeeze(1)
        attention = {}
        similarity = {}
        if rows.numel():
            fused, weights = self.fuse_pairs(enc, rows, rows, need_weights=True)
            logits[rows] = self.classifier(fused)
            embedding[rows] = F.normalize(fused, dim=-1)
            match_p = self.label_matching(fused).softmax(-1)[:, 1]
            attention = self._attention(x, enc, rows, weights)
            if bool(both[0]):
                cos = float((enc["audio"][3][0] * enc["visual"][3][0]).sum().detach())
                similarity["audio_video"] = {"alignment_cosine": round(cos, 4), "label_match_probability": round(float(match_p[0].detach()), 4)}
        logits = logits[:, idx]
        probs = logits.softmax(-1)
        notes += self._path_notes(pa, pv)
        out = ModelOutput(
            probs=probs,
            labels=out_labels,
            embedding=embedding,
            logits=logits,
            modality_probs={m: self._masked_probs(lg[:, idx], enc[m][2]) for m, lg in modality_logits.items()},
            modality_embeddings={m: enc[m][3] for m in modality_logits},
            attention=attention,
            similarity=similarity,
            notes=notes,
        )
        return out

    @staticmethod
    def _masked_probs(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Softmax per row; rows without the modality get uniform probabilities (no decision)."""
        probs = logits.softmax(-1)
        return torch.where(present.unsqueeze(1), probs, torch.full_like(probs, 1.0 / probs.shape[1]))

    def _path_notes(self, pa: torch.Tensor, pv: torch.Tensor) -> list[str]:
        b = pa.shape[0]
        paths = {
            "audio-visual: cross-attention fusion (audio<->video), pooled + concatenated classifier": pa & pv,
            "audio only: the video branch is masked (nothing imputed); decision from Foal-Net's audio head "
            "on the pooled audio projection, without fusion": pa & ~pv,
            "image/video only: the audio branch is masked (nothing imputed); decision from Foal-Net's video head "
            "on the pooled video projection, without fusion": pv & ~pa,
            "no audio and no face/frames: Foal-Net uses neither text nor anything else; uniform probabilities": ~pa & ~pv,
        }
        notes = []
        for text, rows in paths.items():
            if bool(rows.any()):
                notes.append(text if b == 1 else f"rows {rows.nonzero().squeeze(1).tolist()}: {text}")
        return notes

    def _attention(self, x: ModelInput, enc: dict, rows: torch.Tensor, weights: list) -> dict:
        """audio-to-video [B, layer, audio_token, frame] and video-to-audio [B, layer, frame, audio_token]."""
        b = x.batch_size
        am, vm = enc["audio"][1], enc["visual"][1]
        t, n = am.shape[1], vm.shape[1]
        a2v = torch.zeros(b, len(weights), t, n, device=am.device)
        v2a = torch.zeros(b, len(weights), n, t, device=am.device)
        for layer, (wa, wv) in enumerate(weights):
            a2v[rows, layer] = wa
            v2a[rows, layer] = wv
        ticks = {"layer": list(range(1, len(weights) + 1)), "audio_token": self._audio_ticks(x, am), "frame": x.frame_times}
        return {
            "audio_to_video": (a2v, ("layer", "audio_token", "frame"), ticks),
            "video_to_audio": (v2a, ("layer", "frame", "audio_token"), ticks),
        }

    def _audio_ticks(self, x: ModelInput, pooled_mask: torch.Tensor) -> list[list[float]]:
        """Start time (s) of each pooled audio token per row."""
        s = max(1, self.config.audio_stride)
        counts = pooled_mask.sum(1).tolist()
        if self.config.audio_source == "wavlm":
            return [[round(i * s * self.config.wavlm_hop, 3) for i in range(int(n))] for n in counts]
        out = []
        for i, n in enumerate(counts):
            times = x.audio_times[i] if i < len(x.audio_times) else []
            ticks = list(times[::s])[: int(n)]
            if len(ticks) < n:  # times not given: 20-ms tokens
                ticks = [round(j * s * 0.02, 3) for j in range(int(n))]
            out.append(ticks)
        return out
