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
