"""The Predict tab's picture box: gr.Image, refusing in one line an upload that is no picture.

gradio reads an uploaded picture (Pillow) before any handler runs; left alone, a video renamed .jpg failed
there with no message at all. A box of this class is gradio's own Image in the page (a template of it:
the same frontend), with that reading's failure worded. gradio writes an interface stub for every
component class beside its module at import (`picturebox.pyi`, committed: it changes only when this
class does); that is why the class has a module of its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr


class PictureBox(gr.Image):
    """gr.Image whose upload that is no picture is refused in one line naming the file."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - Pillow's UnidentifiedImageError, a truncated file, ...
            name = getattr(payload, "orig_name", None) or Path(str(getattr(payload, "path", "") or "")).name
            raise gr.Error(f"not a picture: {name} (for a video or a sound, choose 'Video' or 'Audio only' above)",
                           print_exception=False) from None
