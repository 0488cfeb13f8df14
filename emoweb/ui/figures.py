"""The plotly figures the tabs show (one palette and label order from `common`), and the face box
drawn on a frame. Pure drawing: no services, no gradio components.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emoweb.services import attention
from emoweb.ui.common import label_colour, ordered_labels, ptext

MODEL_COLOURS: tuple[str, ...] = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")
BEFORE_AFTER = {"before": "#b0b0b0", "after": "#4c72b0"}


def model_colour(name: str, names: Sequence[str]) -> str:
    names = list(names)
    return MODEL_COLOURS[(names.index(name) if name in names else 0) % len(MODEL_COLOURS)]


_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), font=dict(size=12))
TITLE_CHARS = 46  # a title's line fits a phone's chart (about 320 px at 12 px type): plotly never wraps text itself


def wrapped(text: Any, width: int = TITLE_CHARS, bold: bool = False) -> str:
    """User or model text for a plotly title (`ptext`), broken into lines of at most `width` characters
    between words; `bold`: each line in bold."""
    lines = textwrap.wrap(ptext(text), width) or [""]
    return "<br>".join(f"<b>{line}</b>" if bold else line for line in lines)


SUBPLOT_CHARS = 28  # a subplot title is drawn larger (16 px), centred over its plot (right of the axis titles)


def _titled(text: str, first_subplot: str = "", bottom: int = 40) -> dict:
    """The figures' layout with a title wrapped for a phone, and the top margin its lines and those of the
    first subplot's title (drawn above that subplot, inside the margin) need; `bottom`: the bottom margin
    (room for a legend or colour scale under the chart)."""
    top = 30 + 20 * len(textwrap.wrap(text, TITLE_CHARS)) + 24 * len(textwrap.wrap(first_subplot, SUBPLOT_CHARS))
    return {**_LAYOUT, "title": dict(text=wrapped(text), font=dict(size=14)), "margin": dict(l=50, r=20, t=top, b=bottom)}


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=ptext(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=160, **_LAYOUT)
    return fig


def probability_figure(probs: dict[str, dict[str, float]], title: str = "Probability per label, per model") -> go.Figure:
    """All models in one chart: grouped bars, one colour per label (the same everywhere)."""
    if not probs:
        return empty_figure("no model answered")
    models = list(probs)
    labels = ordered_labels([lab for p in probs.values() for lab in p])
    fig = go.Figure()
    for lab in labels:
        fig.add_bar(
            name=ptext(lab), x=[ptext(m) for m in models], y=[probs[m].get(lab, 0.0) for m in models],
            marker_color=label_colour(lab, labels),
            hovertemplate="%{x} · " + ptext(lab) + ": %{y:.3f}<extra></extra>",
        )
    fig.update_layout(barmode="group", yaxis=dict(title="probability", range=[0, 1]), legend_title_text="label",
                      height=360, **_titled(title))
    return fig


def modality_figure(decisions: dict[str, dict[str, dict[str, float]]]) -> go.Figure:
    """Per model (one row each, so a phone's width holds them), the decision of each modality alone and the
    fused one: stacked probability bars, one colour per label."""
    decisions = {m: d for m, d in decisions.items() if d}
    if not decisions:
        return empty_figure("no per-modality decisions")
    models = list(decisions)
    labels = ordered_labels([lab for d in decisions.values() for p in d.values() for lab in p])
    fig = make_subplots(rows=len(models), cols=1, subplot_titles=[wrapped(m, SUBPLOT_CHARS) for m in models], shared_xaxes=True,
                        vertical_spacing=0.25 / len(models))
    for row, model in enumerate(models, start=1):
        mods = list(decisions[model])
        for lab in labels:
            fig.add_bar(
                name=ptext(lab), y=[ptext(m) for m in mods], x=[decisions[model][m].get(lab, 0.0) for m in mods], orientation="h",
                marker_color=label_colour(lab, labels), legendgroup=lab, showlegend=row == 1,
                hovertemplate="%{y} · " + ptext(lab) + ": %{x:.3f}<extra></extra>", row=row, col=1,
            )
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    fig.update_xaxes(range=[0, 1], title_text="probability", row=len(models), col=1)
    # the labels' legend under the chart, in rows
    fig.update_layout(barmode="stack", height=200 + 130 * len(models), legend=dict(orientation="h", x=0, y=0, yref="container",
                      yanchor="bottom"), **_titled("What the face, the voice and the words each said alone (and all together)",
                                                   models[0], bottom=110))
    return fig


ATTENTION_MAP_PX, ATTENTION_GAP_PX = 400, 250  # per map; the gap holds its reading and the next map's title (wrapped)


def attention_figure(maps: list[tuple[str, np.ndarray, tuple[str, str], dict[str, list]]]) -> go.Figure:
    """One heatmap per (plain title, [R, C] weights, (row axis, column axis), {axis: ticks}) with the real
    axes and their units (`services.attention.AXES`: frame times in s, words, pixels of the face picture).
    Colour is each weight relative to an equal share of its row on one fixed range for every map
    (`services.attention`), so flat attention looks flat; under each map, one line reading it."""
    maps = [m for m in maps if m[1].ndim == 2 and m[1].size]
    if not maps:
        return empty_figure("no attention maps (no model exposes one for this clip)")
    limit = float(np.log2(attention.COLOUR_RANGE))
    fig = make_subplots(rows=len(maps), cols=1, subplot_titles=[wrapped(t, SUBPLOT_CHARS) for t, *_ in maps],
                        vertical_spacing=ATTENTION_GAP_PX / (ATTENTION_MAP_PX * len(maps)))
    for row, (_title, w, axes, ticks) in enumerate(maps, start=1):
        y_axis, x_axis = axes
        x_ticks = ticks.get(x_axis) or []
        n_x = min(w.shape[1], len(x_ticks)) if x_ticks else w.shape[1]
        w = w[:, :n_x]
        rel = attention.relative_to_equal(w)
        # without ticks an axis is numbered from 1, with no unit (a column number is no time)
        x_text = [ptext(attention.tick_text(v, x_axis)) for v in x_ticks[:n_x]] or [str(i + 1) for i in range(n_x)]
        y_ticks = ticks.get(y_axis) or []
        y_text = [ptext(attention.tick_text(v, y_axis)) for v in y_ticks[: w.shape[0]]] or [str(i + 1) for i in range(w.shape[0])]
        fig.add_heatmap(
            z=attention.colour_values(w), x=list(range(n_x)), y=list(range(w.shape[0])), colorscale="RdBu_r",
            zmin=-limit, zmax=limit, zmid=0, showscale=row == 1,
            # the colour scale under the maps, across: beside them it took a third of a phone's width
            colorbar=dict(title=dict(text="× an equal share", side="top"), orientation="h", x=0, xanchor="left", len=1.0,
                          y=0, yref="container", yanchor="bottom", thickness=12, tickvals=[-limit, -1, 0, 1, limit],
                          ticktext=[f"1/{attention.COLOUR_RANGE:g}", "1/2", "equal", "2", f"{attention.COLOUR_RANGE:g}"]),
            customdata=[[f"{y_text[i] if i < len(y_text) else i} → {x_text[j]}: weight {w[i, j]:.4f}, {rel[i, j]:.2f}× an equal share"
                         for j in range(n_x)] for i in range(w.shape[0])],
            hovertemplate="%{customdata}<extra></extra>", row=row, col=1,
        )
        step = max(1, n_x // 16)
        line = attention.reading(w, x_axis, x_ticks[:n_x])
        fig.update_xaxes(tickmode="array", tickvals=list(range(0, n_x, step)), ticktext=x_text[::step],
                         title_text=f"{wrapped(attention.axis_label(x_axis), SUBPLOT_CHARS)}:<br>{wrapped(line, SUBPLOT_CHARS, bold=True)}", row=row, col=1)
        ystep = max(1, w.shape[0] // 10)
        fig.update_yaxes(tickmode="array", tickvals=list(range(0, w.shape[0], ystep)), ticktext=y_text[::ystep],
                         title_text=wrapped(attention.axis_label(y_axis), 30), autorange="reversed", row=row, col=1)
    # the last map's reading, then the colour scale, under the maps
    fig.update_layout(height=max(320, ATTENTION_MAP_PX * len(maps)) + 160,
                      **_titled("Where each model looked (red: more than an equal share, blue: less)", maps[0][0], bottom=200))
    return fig


def similarity_figure(tables: list[tuple[str, dict[str, float], dict[str, str]]], labels: Sequence[str]) -> go.Figure:
    """Horizontal bars per table (model × what): to each label's text, to the nearest labelled clips.
    `tables`: (title, {item: similarity}, {item: label for the colour})."""
    tables = [t for t in tables if t[1]]
    if not tables:
        return empty_figure("no similarity tables")
    fig = make_subplots(rows=len(tables), cols=1, subplot_titles=[wrapped(t, SUBPLOT_CHARS) for t, *_ in tables])
    for row, (_title, values, colour_of) in enumerate(tables, start=1):
        items = list(values)
        fig.add_bar(
            x=[values[i] for i in items], y=[ptext(i) for i in items], orientation="h", showlegend=False,
            marker_color=[label_colour(colour_of.get(i, i), labels) for i in items],
            hovertemplate="%{y}: %{x:.3f}<extra></extra>", row=row, col=1,
        )
        fig.update_yaxes(autorange="reversed", row=row, col=1)
        fig.update_xaxes(title_text=wrapped("how alike (1 = the same; 0 or less: not alike)"), row=row, col=1)
    fig.update_layout(height=max(300, 260 * len(tables)),
                      **_titled("How alike this clip is to each label's words and to the most alike labelled clips", tables[0][0]))
    return fig


def timeline_figure(times: Sequence[float], probs: np.ndarray | None, labels: Sequence[str], faces: Sequence[bool],
                    segments: Sequence[dict] = (), duration: float | None = None) -> go.Figure:
    """Per-frame emotion over the clip (facial expression per sampled frame), speech segments shaded."""
    if probs is None or not len(times):
        return empty_figure("no per-frame timeline: no frames (audio only)" if not len(times) else
                            "no per-frame timeline: no face found in any frame")
    order = ordered_labels(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    fig = go.Figure()
    for seg in segments:
        fig.add_vrect(x0=float(seg.get("start", 0)), x1=float(seg.get("end", 0)), fillcolor="#dddddd", opacity=0.4,
                      line_width=0, layer="below")
    for lab in order:
        fig.add_scatter(
            x=list(times), y=probs[:, index[lab]].tolist(), mode="lines+markers", name=ptext(lab),
            line=dict(color=label_colour(lab, order), width=2), marker=dict(size=5),
            hovertemplate="%{x:.2f} s · " + ptext(lab) + ": %{y:.3f}<extra></extra>",
        )
    no_face = [t for t, f in zip(times, faces) if not f]
    if no_face:
        fig.add_scatter(x=no_face, y=[0.0] * len(no_face), mode="markers", name="main face not seen (nearest frame's crop)",
                        marker=dict(symbol="x", color="black", size=8))
    fig.update_layout(xaxis=dict(title="time (s)", range=[0, duration] if duration else None),
                      yaxis=dict(title="probability", range=[0, 1]), height=340, legend_title_text="label",
                      **_titled("Per-frame emotion timeline (facial expression of each sampled frame; grey: speech)"))
    return fig


def confusion_figure(reports: dict[str, dict]) -> go.Figure:
    """One confusion matrix per model (rows true, columns predicted), counts annotated."""
    reports = {m: r for m, r in reports.items() if r.get("confusion")}
    if not reports:
        return empty_figure("no confusion matrix")
    models = list(reports)
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=[ptext(m) for m in models], horizontal_spacing=0.12)
    for col, m in enumerate(models, start=1):
        labels = [ptext(lab) for lab in reports[m]["labels"]]
        z = np.asarray(reports[m]["confusion"])
        fig.add_heatmap(z=z, x=labels, y=labels, colorscale="Blues", showscale=False, text=z, texttemplate="%{text}",
                        hovertemplate="true %{y} → predicted %{x}: %{z}<extra></extra>", row=1, col=col)
        fig.update_xaxes(title_text="predicted", row=1, col=col)
        fig.update_yaxes(title_text="true" if col == 1 else None, autorange="reversed", row=1, col=col)
    fig.update_layout(title="Confusion matrices", height=420, **_LAYOUT)
    return fig


def before_after_figure(rows: dict[str, tuple[float | None, float | None]]) -> go.Figure:
    """Leave-one-out accuracy on the profile's labelled clips: model alone vs model + cache."""
    if not rows:
        return empty_figure("no cache rebuilt")
    models = list(rows)
    fig = go.Figure()
    for i, what in enumerate(("before", "after")):
        vals = [rows[m][i] for m in models]
        fig.add_bar(name={"before": "model alone", "after": "model + cache"}[what], x=[ptext(m) for m in models],
                    y=[v if v is not None else 0 for v in vals], marker_color=BEFORE_AFTER[what],
                    text=[f"{100 * v:.0f}%" if v is not None else "n/a" for v in vals], textposition="outside")
    fig.update_layout(barmode="group", yaxis=dict(title="accuracy", range=[0, 1.1]), height=320,
                      **_titled("Accuracy on the profile's labelled clips (leave-one-out)"))
    return fig


def latency_figure(stages: dict[str, float], models: dict[str, float]) -> go.Figure:
    """Shared stages (run once for all models) and each model's own time, in milliseconds."""
    fig = go.Figure()
    names = list(models)
    for stage, sec in stages.items():
        fig.add_bar(name=ptext(stage), y=["shared features"], x=[1000 * sec], orientation="h")
    for m in names:
        fig.add_bar(name=ptext(m), y=[ptext(m)], x=[1000 * models[m]], orientation="h",
                    marker_color=model_colour(m, names), showlegend=False)
    fig.update_layout(barmode="stack", xaxis=dict(title="milliseconds"), height=260 + 30 * len(names),
                      **_titled("Latency (ms): shared feature stages once, then each model"))
    return fig


def draw_boxes(frame: np.ndarray, box: tuple[int, int, int, int] | None, colour=(46, 204, 113), width: int = 2) -> np.ndarray:
    """A copy of the frame with the face box drawn (x, y, w, h)."""
    img = np.array(frame, copy=True)
    if box is None:
        return img
    x, y, w, h = (int(v) for v in box)
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W - 1, x + w), min(H - 1, y + h)
    if x1 <= x0 or y1 <= y0:
        return img
    img[y0 : y0 + width, x0:x1] = colour
    img[max(y0, y1 - width) : y1, x0:x1] = colour
    img[y0:y1, x0 : x0 + width] = colour
    img[y0:y1, max(x0, x1 - width) : x1] = colour
    return img
