"""Gradio UI (Blocks): one module per tab (predict, label, compare, models_tab), the Predict tab's answer
shown by `explain`, the plotly figures in `figures`, shared colours and helpers in `common`, the
assembly in `app`. The UI only calls services."""


def build_app(*args, **kwargs):
    """See `emoweb.ui.app.build_app` (imported lazily: gradio loads only when the UI is built)."""
    from emoweb.ui.app import build_app as _build

    return _build(*args, **kwargs)


__all__ = ["build_app"]
