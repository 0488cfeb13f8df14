"""Models tab: backbone profile, device, which weights are loaded and their cards, the label set of the
chosen profile, and the few-shot cache's hyper-parameters."""
import gradio as gr

from emoweb.services import modelinfo
from emoweb.ui import common as C
from emoweb.ui.label import tuning_of

MODEL_HEADERS = ["model", "code present", "checkpoint", "loaded", "labels", "validation (from the card)"]
CACHE_HEADERS = ["model", "snapshot", "in use", "built at", "labelled clips per label", "how much your clips count (alpha)",
                 "how closely alike (beta)", "set by"]



def _more_right(clips: int) -> str:
    """'at least 3 more of them right than' ('at least as many of them right as' for 0), before 'the model alone'."""
    return "at least as many of them right as" if clips == 0 else f"at least {clips} more of them right than"

def _short(path) -> str:
    """A path relative to the repository when inside it (no need to show the server's layout)."""
    from emoweb.config import REPO_ROOT

    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _card_metrics(card: dict) -> str:
    val = (card.get("metrics") or {}).get("val") or {}
    parts = []
    for mod, r in val.items():
        if isinstance(r, dict) and r.get("accuracy") is not None:
            parts.append(f"{mod}: acc {100 * r['accuracy']:.1f}% · UAR {100 * (r.get('uar') or 0):.1f}% (n={r.get('n', '?')})")
    return "; ".join(parts) or "-"


def models_info(ctx: C.AppContext, profile_ref, request) -> tuple:
    predictor = ctx.predictor
    bb = predictor.backbones
    rows, cards = [], {}
    for status in modelinfo.model_statuses(predictor):
        card = status.card or {}
        if status.card is not None:
            cards[modelinfo.display_name(status.name)] = {k: v for k, v in card.items() if k not in ("training",)}
        rows.append([
            modelinfo.display_name(status.name), "yes" if status.code_present else "no",
            "yes" if status.checkpoint_present else ("random init (untrained)" if card.get("untrained") else "no"),
            "yes" if status.card is not None else "no",
            ", ".join(card.get("labels") or (card.get("config") or {}).get("labels") or []) or "-",
            ("UNTRAINED weights · " if card.get("untrained") else "") + _card_metrics(card),
        ])
    s = ctx.settings
    db = s.db_url.split(":", 1)[0]
    lines = [
        f"**Backbone profile:** {C.esc(bb.name)}{' (random weights: untrained)' if bb.untrained else ''} · "
        f"**device:** {C.esc(bb.device)} · **threads:** {s.threads or 'torch default'} · **database:** {C.esc(db)}",
        f"**Limits:** clips analysed up to {s.max_seconds:g} s, uploads up to {s.max_upload_mb:g} MB, "
        f"{s.n_frames} frames sampled per clip.",
        f"**Checkpoints:** {C.esc(_short(predictor.checkpoint_root))}/{C.esc(bb.name)}/ (weights + JSON card per model)",
        f"**Models answering now:** {', '.join(C.model_name(n) for n in predictor.model_names('all')) or 'none (no trained checkpoint for this profile)'}",
    ]
    from emoweb.services.cachebuild import tuning_defaults

    d = tuning_defaults()
    lines.append(f"**How your labelled clips teach the models (few-shot cache):** each label gets the mean of how alike "
                 f"this clip is to its labelled clips. With fewer than "
                 f"{d['judge_min_per_label']} labelled clips of some label the cache is careful: it can only change answers "
                 f"a model gives with less than {100 * d['safe_confidence']:.0f}% probability (how much your clips count, "
                 f"alpha: {d['safe_alpha']:.2f}). With more, a fitted adapter (a per-profile bias of each label and a "
                 f"linear map of one cache key) is judged on the labelled clips, each answered by a fit without it; it is "
                 f"used when it gets {_more_right(d['adapter_margin_clips'])} the model alone and is "
                 f"surer of their right labels. From {d['votes_min_clips']} labelled clips on, the cache's votes are a "
                 f"candidate too: how much they count (alpha: 0 = not at all, up to {max(d['alpha_spreads']):g} x the "
                 f"spread of the model's scores) is chosen by leave-one-out on the labelled clips, and they are used "
                 f"only when they get {_more_right(d['judge_margin_clips'])} the model alone and "
                 f"(when the adapter passes too) beat it by as many.")
    cache_rows = []
    if profile_ref and profile_ref != C.NO_PROFILE:
        profile = ctx.profile(profile_ref, request)
        labels = C.ordered_labels(profile.labels)
        lines.append(f"**Label set of {C.esc(profile.name)}:** " + ", ".join(C.esc(lab) for lab in profile.labels)
                     + " (custom labels are accepted by the cache and by zero-shot models such as MER-CLIP)")
        for snap in ctx.service.snapshots(profile.id):
            hyper = snap.get("hyper") or {}
            cache_rows.append([modelinfo.display_name(snap["model"]), snap["id"], "yes" if snap["active"] else "",
                               modelinfo.minute_text(snap["built_at"]), modelinfo.per_label_text(snap.get("n_per_label") or {}),
                               *(None if hyper.get(k) is None else round(hyper[k], 2) for k in ("alpha", "beta")), tuning_of(hyper)])
    else:
        labels = list(C.LABEL_ORDER)
        lines.append("**Label set:** " + ", ".join(labels) + " (choose a profile to see its own)")
    swatches = " ".join(f"<span style='color:{C.label_colour(lab, labels)}'>■</span> {C.esc(lab)}" for lab in labels)
    lines.append("**Colours:** " + swatches)
    return "\n\n".join(lines), rows, cards, cache_rows


def build(ctx: C.AppContext, profile_dd: gr.Dropdown, heavy: dict) -> dict:
    with gr.Tab("Models", id="models") as tab:
        error = C.error_box("models-error")
        info = gr.Markdown("", elem_id="models-info")
        table = gr.Dataframe(headers=MODEL_HEADERS, label="Models and weights", interactive=False, elem_id="models-table", wrap=True)
        cache = gr.Dataframe(headers=CACHE_HEADERS, label="Cache snapshots of the profile (hyper-parameters)", interactive=False,
                             elem_id="cache-table", wrap=True)
        with gr.Accordion("Checkpoint cards", open=False):
            cards = gr.JSON(label="cards")
        refresh = gr.Button("Refresh", elem_id="models-refresh")

    @C.user_errors
    def models(profile_ref, request: gr.Request):
        md, rows, card_json, cache_rows = models_info(ctx, profile_ref, request)
        return md, rows, card_json, cache_rows

    outputs = [info, table, cards, cache]
    C.report_errors(refresh.click(models, [profile_dd], outputs, api_name="models_info"), error)
    # opening the tab shows what changed since (a rebuild's snapshots, a profile's new labels)
    C.report_errors(tab.select(models, [profile_dd], outputs, api_visibility="undocumented"), error)
    return {"fn": models, "outputs": outputs}
