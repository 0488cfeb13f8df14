"""Neural models (torch only): backbones, the four emotion models and the few-shot cache.

Never imports gradio, sqlalchemy or emoweb: the dependency points from emoweb to here.
"""
LABEL7: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
