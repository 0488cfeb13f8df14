"""The text backbone's own emotion decision: all-MiniLM-L6-v2 with its top layers tuned on emotional text.

Why: the frozen sentence embedding every model reads was trained to tell paraphrases apart, not
feelings: a linear probe on it reaches 0.52 weighted F1 on MELD's dev file, and the text heads
trained on it 0.46. Tuning MiniLM's top transformer layers and a linear classifier on MELD train and
GoEmotions train (`python -m emoweb tune-text`; recipe and scores in `minilm_emotion.json`) gives a decision that
reads what is said. As the FER backbone's decision sits beside a model's visual head, this one sits
beside its text head (`models.residual.BackboneResidual`); the sentence embedding and token states the
models read are the untouched MiniLM's, so no other feature changes.

Weights: `models/weights/minilm_emotion.safetensors` holds only the tuned layers and the classifier
(float16); the other layers are the installed MiniLM's. Its metadata names the labels and how many
top layers were tuned.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from models.backbones.text import mean_pool, minilm_dir

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "minilm_emotion.safetensors"


class TextEmotionClassifier(nn.Module):
    """`forward(texts) -> logits [B, C]` over `labels`: MiniLM's mean-pooled last states (the same pooling
    as the sentence embedding) through a linear layer. Only the top `tuned_layers` of MiniLM's 6 and the
    classifier are trainable (`trainable_parameters`); `save` writes just those."""

    def __init__(self, labels: tuple[str, ...], tuned_layers: int, max_length: int = 128):
        super().__init__()
        path = minilm_dir()
        self.encoder = AutoModel.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.labels = tuple(labels)
        n_layers = self.encoder.config.num_hidden_layers
        if not 1 <= tuned_layers <= n_layers:
            raise ValueError(f"tuned_layers must be 1..{n_layers}, got {tuned_layers}")
        self.tuned_layers = tuned_layers
        self.max_length = max_length
        self.classifier = nn.Linear(self.encoder.config.hidden_size, len(labels))
        tuned = {f"encoder.layer.{i}." for i in range(n_layers - tuned_layers, n_layers)}
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(any(name.startswith(prefix) for prefix in tuned))

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """{name: parameter} of the tuned layers and the classifier (what `save` writes)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.classifier.weight.device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        states = self.encoder(**batch).last_hidden_state
        return self.classifier(mean_pool(states, batch["attention_mask"].bool()))

    def save(self, path: Path) -> None:
        """The tuned parameters (float16), with the labels and the number of tuned layers as metadata."""
        tensors = {n: p.detach().half().contiguous().cpu() for n, p in self.trainable_parameters().items()}
        save_file(tensors, str(path), metadata={"labels": json.dumps(list(self.labels)), "tuned_layers": str(self.tuned_layers)})


def load_text_emotion(path: Path = WEIGHTS) -> TextEmotionClassifier | None:
    """The shipped classifier in eval mode, or None when `path` does not exist (no text decision of the
    backbone: models keep their own text head alone). Raises ValueError for a file whose tensors do not
    match the tuned layers it names."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:  # one read: the metadata names the layers, the tensors fill them
        meta, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    model = TextEmotionClassifier(tuple(json.loads(meta["labels"])), int(meta["tuned_layers"]))
    expected = set(model.trainable_parameters())
    if set(tensors) != expected:
        raise ValueError(f"{path.name}: tensors {sorted(set(tensors) ^ expected)[:3]} do not match its tuned layers")
    with torch.no_grad():
        for name, p in model.trainable_parameters().items():
            p.copy_(tensors[name].float())
    return model.eval().requires_grad_(False)
