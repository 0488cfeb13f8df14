"""Shared pieces of the UI: the app context (settings, the process-wide Predictor and CaregiverService),
one palette and label order for every chart, escaping of user text, error handling, and the plotly
figures the tabs reuse.

The UI only calls services; nothing here touches a model's weights or the database directly.
"""
import atexit
import functools
import html
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emoweb.config import Settings
from emoweb.errors import EmoWebError, NotFoundError
from emoweb.services import attention

log = logging.getLogger("emoweb.ui")

# -- labels and colours: one order, one palette, everywhere -------------------------------------

LABEL_ORDER: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
PALETTE: dict[str, str] = {
    "anger": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "joy": "#f2b701",
    "neutral": "#7f7f7f",
    "sadness": "#1f77b4",
    "surprise": "#17becf",
}
EXTRA_COLOURS: tuple[str, ...] = ("#2ca02c", "#e377c2", "#bcbd22", "#ff7f0e", "#393b79", "#637939", "#843c39", "#7b4173")
MODEL_COLOURS: tuple[str, ...] = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")
LABEL_EMOJI: dict[str, str] = {"anger": "😠", "disgust": "🤢", "fear": "😨", "joy": "😊", "neutral": "😐", "sadness": "😢",
                               "surprise": "😮"}
BEFORE_AFTER = {"before": "#b0b0b0", "after": "#4c72b0"}
MAX_LABEL_BUTTONS = 12  # one-click label buttons (keys 1-9 for the first nine)
NO_PROFILE = "(don't save)"
OWNER_HEADER = "x-emoweb-owner"  # the visitor's owner key, sent by the browser (OWNER_JS) or an API client
OWNER_STORAGE = "emoweb-owner"  # the browser's local-storage entry holding it

# Runs before the app's own scripts (launch(head=...)): a random owner key kept in this browser's local
# storage, sent with every request to this server. Without local storage, a key per page load.
OWNER_JS = f"""<script>
(() => {{
  const valid = (k) => typeof k === "string" && /^[A-Za-z0-9_-]{{22,128}}$/.test(k);
  let key = null;
  try {{ key = window.localStorage.getItem("{OWNER_STORAGE}"); }} catch (e) {{}}
  if (!valid(key)) {{
    const bytes = new Uint8Array(24);
    window.crypto.getRandomValues(bytes);
    key = btoa(String.fromCharCode(...bytes)).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
    try {{ window.localStorage.setItem("{OWNER_STORAGE}", key); }} catch (e) {{}}
  }}
  const send = window.fetch.bind(window);
  window.fetch = (input, init) => {{
    const url = new URL(input instanceof Request ? input.url : String(input), window.location.href);
    if (url.origin !== window.location.origin) return send(input, init);
    const headers = new Headers((init && init.headers) || (input instanceof Request ? input.headers : undefined));
    headers.set("X-EmoWeb-Owner", key);
    return send(input, {{ ...(init || {{}}), headers }});
  }};
}})();
</script>"""


# Page styles (launch(css=...)): the answer in large type, warnings apart from information, label
# buttons big enough to tap, and phone widths (caregivers label on phones).
CSS = """
.emoweb-answer { padding: 4px 0 4px 14px; margin: 4px 0; }
.emoweb-answer-label { font-size: 2.2rem; font-weight: 700; }
.emoweb-answer-sure { font-size: 1.5rem; }
.emoweb-warning { background: #fff4d6; border: 1px solid #e0b400; border-radius: 8px; padding: 4px 12px; color: #3d3000; }
.emoweb-small { font-size: 0.85rem; opacity: 0.8; }
#label-buttons button { min-height: 44px; font-size: 1rem; }
@media (max-width: 600px) {
  .gradio-container { padding: 4px !important; }
  .emoweb-answer-label { font-size: 1.8rem; }
  #label-buttons { gap: 6px; }
  #label-buttons button { flex: 1 1 40% !important; min-width: 40% !important; }
}
"""


def ordered_labels(labels: Sequence[str]) -> list[str]:
    """The seven emotions in their fixed order first, then any custom label in the order given."""
    seen = list(dict.fromkeys(labels))
    return [lab for lab in LABEL_ORDER if lab in seen] + [lab for lab in seen if lab not in LABEL_ORDER]


def label_colour(label: str, labels: Sequence[str] = ()) -> str:
    """The label's colour: fixed for the seven emotions; custom labels by their place after them."""
    if label in PALETTE:
        return PALETTE[label]
    extras = [lab for lab in ordered_labels(labels) if lab not in PALETTE]
    idx = extras.index(label) if label in extras else sum(map(ord, label))
    return EXTRA_COLOURS[idx % len(EXTRA_COLOURS)]


def model_colour(name: str, names: Sequence[str]) -> str:
    names = list(names)
    return MODEL_COLOURS[(names.index(name) if name in names else 0) % len(MODEL_COLOURS)]


# -- escaping ---------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def esc(text: Any) -> str:
    """User text (labels, notes, names, transcripts) for Markdown/HTML: shown as text, never markup."""
    s = html.escape(str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s).replace("\n", " ")


def ptext(text: Any) -> str:
    """User text inside plotly figures (plotly reads a few HTML-like tags in text): entities only."""
    return html.escape(str(text), quote=True)


# -- errors -----------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def user_errors(fn: Callable) -> Callable:
    """Every UI action: EmoWebError -> gr.Error with its one line; anything else is logged with its
    traceback on the server and reaches the person as one line, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except EmoWebError as exc:
            raise gr.Error(one_line(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the boundary between the app and the person
            log.exception("UI action %s failed", getattr(fn, "__name__", "?"))
            raise gr.Error(f"Something went wrong ({type(exc).__name__}): {one_line(exc)}", print_exception=False) from None

    return wrapper


# -- the app context --------------------------------------------------------------------------


class AppContext:
    """Settings plus the process-wide services, created on first need (models load once per process)."""

    def __init__(self, settings: Settings, predictor: Any = None, service: Any = None):
        self.settings = settings
        self._predictor = predictor
        self._service = service
        self._visitors = None
        self._lock = threading.RLock()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="emoweb-ui-"))
        atexit.register(shutil.rmtree, self.tmp_dir, ignore_errors=True)

    @property
    def predictor(self):
        """One Predictor per process: the service's (it creates it on first need)."""
        return self._predictor or self.service.predictor

    @property
    def service(self):
        with self._lock:
            if self._service is None:
                from emoweb.services import CaregiverService

                self._service = CaregiverService(self.settings, predictor=self._predictor)
            return self._service

    # -- who is asking ------------------------------------------------------------------------

    @staticmethod
    def user(request: gr.Request | None) -> str | None:
        """The logged-in caregiver (None when the app runs without login): the annotator of labels."""
        name = getattr(request, "username", None) if request is not None else None
        return name or None

    @property
    def visitors(self):
        """A public demo's visitor housekeeping (limits, expiry, deleting a visitor's data)."""
        with self._lock:
            if self._visitors is None:
                from emoweb.services.visitors import Visitors

                self._visitors = Visitors(self.service, self.settings)
            return self._visitors

    def owner(self, request: gr.Request | None) -> str | None:
        """Whose data a request may see: the logged-in caregiver; else, unless the deployment is one shared
        family (None: everything), the visitor whose browser sent the owner key (header X-EmoWeb-Owner),
        or, without a key, the request's own session. On a public demo, notes the visitor's activity
        and deletes the data of visitors idle past the stated time."""
        user = self.user(request)
        if user is not None:
            return user
        if self.settings.shared:
            return None
        from emoweb.services import visitors

        headers = getattr(request, "headers", None) or {}
        key = headers.get(OWNER_HEADER) if hasattr(headers, "get") else None
        owner = visitors.visitor_owner(key) if key else visitors.session_owner(getattr(request, "session_hash", None) or "")
        if self.settings.public:
            self.visitors.touch(owner)
            self.visitors.expire()
        return owner

    def start_expiry(self, every_s: float = 600) -> None:
        """Also delete idle visitors' data every `every_s` seconds from a background thread, so it goes
        on time when no one makes a request."""

        def loop() -> None:
            while True:
                try:
                    self.visitors.expire()
                except Exception:  # noqa: BLE001 - housekeeping: logged, tried again next round
                    log.exception("deleting idle visitors' data failed")
                time.sleep(every_s)

        threading.Thread(target=loop, name="emoweb-visitor-expiry", daemon=True).start()

    def profiles(self, request: gr.Request | None) -> list:
        """Profiles this person may see: their own (all of them in a shared deployment)."""
        return self.service.list_profiles(owner=self.owner(request))

    def profile(self, ref: Any, request: gr.Request | None):
        """A profile by id or name, refused (as 'no profile') when it belongs to someone else."""
        if ref is None or str(ref).strip() in ("", NO_PROFILE):
            raise EmoWebError("choose or create a profile first")
        ref = str(ref).strip()
        owner = self.owner(request)
        try:
            info = self.service.get_profile(int(ref) if ref.isdigit() else ref, owner=owner)
        except NotFoundError:
            raise NotFoundError(f"no profile {ref[:80]!r}") from None
        if owner is not None and info.owner != owner:
            raise NotFoundError(f"no profile {ref[:80]!r}")
        return info

    def check_room(self, profile, upload: Path) -> None:
        """On a public demo, refuse (one line) a visitor's clip past the per-visitor limits."""
        from emoweb.services.visitors import VISITOR

        if self.settings.public and (profile.owner or "").startswith(VISITOR):
            self.visitors.check_room(profile.owner, profile.id, upload)

    def clip_in(self, profile, clip_id: Any):
        """A clip of the given (already authorised) profile."""
        cid = self.service.clip_id(clip_id if clip_id not in (None, "") else "")
        clip = self.service.get_clip(cid)
        if clip.profile_id != profile.id:
            raise NotFoundError(f"no clip {cid} in profile {profile.name!r}")
        return clip

    def profile_choices(self, request: gr.Request | None) -> list[tuple[str, str]]:
        return [(p.name, str(p.id)) for p in self.profiles(request)]

    # -- temporary files handed to the browser --------------------------------------------------

    def temp_copy(self, src: Path, name: str | None = None) -> str:
        """A copy of a stored file in the UI's temp dir (gradio serves it from its cache); files older
        than an hour are removed on the way."""
        self.prune_temp()
        folder = Path(tempfile.mkdtemp(dir=self.tmp_dir))
        dst = folder / (name or src.name)
        shutil.copyfile(src, dst)
        return str(dst)

    def temp_text(self, name: str, text: str) -> str:
        self.prune_temp()
        folder = Path(tempfile.mkdtemp(dir=self.tmp_dir))
        dst = folder / name
        dst.write_text(text, encoding="utf-8")
        return str(dst)

    def prune_temp(self, max_age_s: float = 3600) -> None:
        now = time.time()
        for folder in self.tmp_dir.iterdir() if self.tmp_dir.is_dir() else []:
            try:
                if now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass


def safe_filename(text: str, default: str = "file") -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60]
    return cleaned or default


# -- figures ------------------------------------------------------------------------------------

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), font=dict(size=12))


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
    fig.update_layout(title=title, barmode="group", yaxis=dict(title="probability", range=[0, 1]), legend_title_text="label",
                      height=360, **_LAYOUT)
    return fig


def modality_figure(decisions: dict[str, dict[str, dict[str, float]]]) -> go.Figure:
    """Per model, the decision of each modality alone and the fused one: stacked probability bars."""
    decisions = {m: d for m, d in decisions.items() if d}
    if not decisions:
        return empty_figure("no per-modality decisions")
    models = list(decisions)
    labels = ordered_labels([lab for d in decisions.values() for p in d.values() for lab in p])
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=[ptext(m) for m in models], shared_yaxes=True)
    for col, model in enumerate(models, start=1):
        mods = list(decisions[model])
        for lab in labels:
            fig.add_bar(
                name=ptext(lab), x=[ptext(m) for m in mods], y=[decisions[model][m].get(lab, 0.0) for m in mods],
                marker_color=label_colour(lab, labels), legendgroup=lab, showlegend=col == 1,
                hovertemplate="%{x} · " + ptext(lab) + ": %{y:.3f}<extra></extra>", row=1, col=col,
            )
    fig.update_layout(title="Decision of each modality alone (and fused)", barmode="stack", height=360,
                      legend_title_text="label", **_LAYOUT)
    fig.update_yaxes(range=[0, 1], title_text="probability", row=1, col=1)
    return fig


def _ticks(values: Sequence[Any], axis: str) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, float) or axis in ("frame", "audio", "audio_segment", "time"):
            try:
                out.append(f"{float(v):.2f} s")
                continue
            except (TypeError, ValueError):
                pass
        out.append(ptext(v))
    return out


def _axis_title(axis: str) -> str:
    titles = {"frame": "frame time", "audio": "audio token time", "audio_segment": "audio segment start",
              "text": "transcript token", "token": "transcript token", "query": "query", "layer": "decoder layer",
              "bottleneck": "bottleneck token"}
    return titles.get(axis, axis.replace("_", " "))


ATTENTION_MAP_PX, ATTENTION_GAP_PX = 320, 120  # per map; the gap holds its reading and the next map's title


def attention_figure(maps: list[tuple[str, np.ndarray, tuple[str, str], dict[str, list]]]) -> go.Figure:
    """One heatmap per (model, attention map) with the real axes (frame times, words, layers, queries).
    Colour is each weight relative to an equal share of its row on one fixed range for every map
    (`services.attention`), so flat attention looks flat; under each map, one line reading it."""
    maps = [m for m in maps if m[1].ndim == 2 and m[1].size]
    if not maps:
        return empty_figure("no attention maps (no model exposes one for this clip)")
    limit = float(np.log2(attention.COLOUR_RANGE))
    fig = make_subplots(rows=len(maps), cols=1, subplot_titles=[ptext(t) for t, *_ in maps],
                        vertical_spacing=ATTENTION_GAP_PX / (ATTENTION_MAP_PX * len(maps)))
    for row, (_title, w, axes, ticks) in enumerate(maps, start=1):
        y_axis, x_axis = axes
        x_ticks = ticks.get(x_axis) or list(range(w.shape[1]))
        y_ticks = ticks.get(y_axis) or [f"{y_axis} {i + 1}" for i in range(w.shape[0])]
        n_x = min(w.shape[1], len(x_ticks))
        w = w[:, :n_x]
        rel = attention.relative_to_equal(w)
        x_text, y_text = _ticks(x_ticks[:n_x], x_axis), _ticks(y_ticks[: w.shape[0]], y_axis)
        fig.add_heatmap(
            z=attention.colour_values(w), x=list(range(n_x)), y=list(range(w.shape[0])), colorscale="RdBu_r",
            zmin=-limit, zmax=limit, zmid=0, showscale=row == 1,
            colorbar=dict(title="× an equal share", tickvals=[-limit, -1, 0, 1, limit], len=min(1.0, 1.2 / len(maps)), y=1,
                          yanchor="top", ticktext=[f"1/{attention.COLOUR_RANGE:g}", "1/2", "equal", "2", f"{attention.COLOUR_RANGE:g}"]),
            customdata=[[f"{y_text[i] if i < len(y_text) else i} → {x_text[j]}: weight {w[i, j]:.4f}, {rel[i, j]:.2f}× an equal share"
                         for j in range(n_x)] for i in range(w.shape[0])],
            hovertemplate="%{customdata}<extra></extra>", row=row, col=1,
        )
        step = max(1, n_x // 16)
        line = attention.reading(w, x_axis, x_ticks[:n_x])
        fig.update_xaxes(tickmode="array", tickvals=list(range(0, n_x, step)), ticktext=x_text[::step],
                         title_text=f"{_axis_title(x_axis)}: <b>{ptext(line)}</b>", row=row, col=1)
        ystep = max(1, w.shape[0] // 10)
        fig.update_yaxes(tickmode="array", tickvals=list(range(0, w.shape[0], ystep)), ticktext=y_text[::ystep],
                         title_text=_axis_title(y_axis), autorange="reversed", row=row, col=1)
    fig.update_layout(title="Where each model looked (red: more than an equal share, blue: less)",
                      height=max(320, ATTENTION_MAP_PX * len(maps)), **_LAYOUT)
    return fig


def similarity_figure(tables: list[tuple[str, dict[str, float], dict[str, str]]], labels: Sequence[str]) -> go.Figure:
    """Horizontal bars per table (model × what): to each label's text, to the nearest labelled clips.
    `tables`: (title, {item: similarity}, {item: label for the colour})."""
    tables = [t for t in tables if t[1]]
    if not tables:
        return empty_figure("no similarity tables")
    fig = make_subplots(rows=len(tables), cols=1, subplot_titles=[ptext(t) for t, *_ in tables])
    for row, (_title, values, colour_of) in enumerate(tables, start=1):
        items = list(values)
        fig.add_bar(
            x=[values[i] for i in items], y=[ptext(i) for i in items], orientation="h", showlegend=False,
            marker_color=[label_colour(colour_of.get(i, i), labels) for i in items],
            hovertemplate="%{y}: %{x:.3f}<extra></extra>", row=row, col=1,
        )
        fig.update_yaxes(autorange="reversed", row=row, col=1)
        fig.update_xaxes(title_text="cosine similarity", row=row, col=1)
    fig.update_layout(title="Similarity to each label's text and to the nearest labelled clips",
                      height=max(300, 220 * len(tables)), **_LAYOUT)
    return fig


def timeline_figure(times: Sequence[float], probs: np.ndarray | None, labels: Sequence[str], faces: Sequence[bool],
                    segments: Sequence[dict] = (), duration: float | None = None) -> go.Figure:
    """Per-frame emotion over the clip (facial expression per sampled frame), speech segments shaded."""
    if probs is None or not len(times):
        return empty_figure("no frames: no per-frame timeline (audio-only clip)")
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
    fig.update_layout(title="Per-frame emotion timeline (facial expression of each sampled frame; grey: speech)",
                      xaxis=dict(title="time (s)", range=[0, duration] if duration else None),
                      yaxis=dict(title="probability", range=[0, 1]), height=340, legend_title_text="label", **_LAYOUT)
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
    fig.update_layout(title="Accuracy on the profile's labelled clips (leave-one-out)", barmode="group",
                      yaxis=dict(title="accuracy", range=[0, 1.1]), height=320, **_LAYOUT)
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
    fig.update_layout(title="Latency (ms): shared feature stages once, then each model", barmode="stack",
                      xaxis=dict(title="milliseconds"), height=260 + 30 * len(names), **_LAYOUT)
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


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
