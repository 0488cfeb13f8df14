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


def named_models(spec: str) -> list[str]:
    """The registry names in a comma-separated `spec` ("emoasst, merclip"), in its order; 'all' is left to the
    caller (which models it means depends on the checkpoints). ValueError (one line) naming the unknown ones."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}, or all")
    return names
