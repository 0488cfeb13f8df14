"""Neural models (torch only): backbones, the four emotion models and the few-shot cache.

Never imports gradio, sqlalchemy or emoweb: the dependency points from emoweb to here.
"""
LABEL7: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
# name -> "module:ModelClass:ConfigClass"; here (not in registry) so listing the names needs no torch
MODELS: dict[str, str] = {
    "emoasst": "models.emoasst:EmoAsst:EmoAsstConfig",
    "merclip": "models.merclip:MERCLIP:MERCLIPConfig",
    "sem_mbt": "models.sem_mbt:MERSEMMBT:MERSEMMBTConfig",
    "foalnet": "models.foalnet:FoalNet:FoalNetConfig",
}
# name -> the name people read (the papers' spelling): shown wherever a model is named to a person
DISPLAY_NAMES: dict[str, str] = {"emoasst": "EmoAsst", "merclip": "MER-CLIP", "sem_mbt": "MER-SEM-MBT", "foalnet": "Foal-Net"}


def _spelling(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


# every way a person may write a model: its registry name or the name printed for it, in any case, with or
# without the dash or underscore ("MER-SEM-MBT", "sem_mbt", "SemMbt")
_SPELLINGS: dict[str, str] = {_spelling(n): m for m in MODELS for n in (m, DISPLAY_NAMES[m])}


def named_models(spec: str) -> list[str]:
    """The registry names in a comma-separated `spec` ("emoasst, MER-CLIP"), in its order; a model may be
    written as printed (EmoAsst, MER-SEM-MBT) or by its registry name, in any case. 'all' is left to the
    caller (which models it means depends on the checkpoints). ValueError (one line) naming the unknown ones."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if _spelling(n) not in _SPELLINGS]
    if unknown:
        known = ", ".join(f"{DISPLAY_NAMES[m]} ({m})" for m in MODELS)
        raise ValueError(f"unknown model(s): {', '.join(unknown)}; known: {known}, or all")
    return list(dict.fromkeys(_SPELLINGS[_spelling(n)] for n in names))
