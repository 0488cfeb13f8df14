"""Model registry: `build(name, dims)`, checkpoint save/load (fp16 safetensors + a JSON card).

A registry, not if-chains: each model module registers (model class, config class) here.
Config fields named like the backbone roles (`audio_dim`, `visual_dim`, `text_dim`, `text_token_dim`)
are filled from the profile's dims, so one model definition serves both profiles.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models import MODELS
from models.calibration import calibration_hook

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
DIM_FIELDS = {"audio_dim": "audio", "visual_dim": "visual", "text_dim": "text", "text_token_dim": "text_tokens"}


def available() -> list[str]:
    """Registered models whose module imports (a model that has not landed is simply absent)."""
    names = []
    for name, spec in MODELS.items():
        try:
            importlib.import_module(spec.split(":")[0])
            names.append(name)
        except ModuleNotFoundError:
            continue
    return names


def _classes(name: str):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    module, model_cls, cfg_cls = MODELS[name].split(":")
    mod = importlib.import_module(module)
    return getattr(mod, model_cls), getattr(mod, cfg_cls)


def model_class(name: str) -> type[nn.Module]:
    """The model's class (its class attributes say how it trains: `learns_from_text`, `uses_composites`)."""
    return _classes(name)[0]


def config_fields(name: str) -> set[str]:
    """The field names of a model's config (what `build` overrides may set)."""
    return {f.name for f in dataclasses.fields(_classes(name)[1])}


def build(name: str, dims: dict[str, int], **overrides) -> nn.Module:
    """A freshly initialised model sized for a backbone profile's dims."""
    model_cls, cfg_cls = _classes(name)
    names = config_fields(name)
    kwargs = {f: dims[role] for f, role in DIM_FIELDS.items() if f in names and role in dims}
    kwargs.update(overrides)
    return model_cls(cfg_cls(**kwargs))


def checkpoint_paths(name: str, profile: str, root: Path = CHECKPOINT_ROOT) -> tuple[Path, Path]:
    return root / profile / f"{name}.safetensors", root / profile / f"{name}.json"


def save(model: nn.Module, name: str, profile: str, card: dict, root: Path = CHECKPOINT_ROOT) -> Path:
    """Write fp16 weights and the card (config, label set, data, metrics, seed) side by side."""
    weights, _ = checkpoint_paths(name, profile, root)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"model": name, "profile": profile})
    write_card(name, profile, {"model": name, "profile": profile, "config": dataclasses.asdict(model.config), **card}, root)
    return weights


def write_card(name: str, profile: str, card: dict, root: Path = CHECKPOINT_ROOT) -> Path:
    """Write a checkpoint's JSON card (atomically: a reader never sees half a card)."""
    _, card_path = checkpoint_paths(name, profile, root)
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str) + "\n")
    tmp.replace(card_path)
    return card_path


def load(name: str, profile: str, root: Path = CHECKPOINT_ROOT, calibrated: bool = True) -> tuple[nn.Module, dict] | None:
    """The shipped model for a profile with its card, or None when no checkpoint exists. `calibrated`:
    with the card's temperatures and sense reliabilities applied to every output (False: the raw logits, to fit them)."""
    weights, card_path = checkpoint_paths(name, profile, root)
    if not weights.is_file() or not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    model_cls, cfg_cls = _classes(name)
    model = model_cls(cfg_cls(**card["config"]))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    calibration = card.get("calibration") or {}
    if calibrated and (calibration.get("temperature") or calibration.get("fusion")):  # every call (models/calibration.py)
        model.register_forward_hook(calibration_hook(calibration))
    return model.eval(), card
