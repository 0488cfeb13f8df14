"""Compare tab: one clip through all models side by side with latency; or a labelled set (a profile's
labelled clips, or a manifest) with accuracy, weighted F1, UAR and a confusion matrix per model."""
from pathlib import Path

import gradio as gr

from emoweb.errors import EmoWebError
from emoweb.services import comparison, uploads
from emoweb.services.cachebuild import accuracy_text
from emoweb.services.modelinfo import display_name
from emoweb.ui import common as C
from emoweb.ui import figures as F
from emoweb.ui.predict import pick_input, stage_progress

CLIP_HEADERS = ["model", "answer", "confidence", "latency (ms)", "modalities used", "notes"]
SOURCES = ("profile's labelled clips", "server manifest", "uploaded manifest")
MAX_MANIFEST_ROWS = 2000


def _report_markdown(reports: dict, heading: str, latency: dict[str, float | None]) -> str:
    lines = [heading, "", comparison.comparison_table(C.shown_names(reports))]
    lat = [f"{C.model_name(m)} {v:.1f} ms/clip" for m, v in latency.items() if v is not None]
    if lat:
        lines.append("\nModel latency (after the shared features): " + ", ".join(lat))
    outside = {m: r.get("n_pred_outside_labels", 0) for m, r in reports.items() if r.get("n_pred_outside_labels")}
    if outside:
        lines.append("\n⚠ predictions outside the label set (counted as errors): "
                     + ", ".join(f"{C.model_name(m)} {n}" for m, n in outside.items()))
    return "\n".join(lines)


def build(ctx: C.AppContext, profile_dd: gr.Dropdown, heavy: dict) -> dict:
    manifests = comparison.server_manifests()
    with gr.Tab("Compare", id="compare"):
        error = C.error_box("compare-error")
        gr.Markdown("### One clip through all models")
        with gr.Row():
            with gr.Column(scale=1):
                clip = gr.Video(label="Clip", sources=["upload", "webcam"], include_audio=True, elem_id="compare-video")
                clip_btn = gr.Button("Compare models on this clip", variant="primary", elem_id="compare-clip")
            with gr.Column(scale=2):
                clip_table = gr.Dataframe(headers=CLIP_HEADERS, label="Side by side", interactive=False, elem_id="compare-table", wrap=True)
                clip_probs = gr.Plot(label="Probabilities", elem_id="compare-prob-chart")
        clip_latency = gr.Plot(label="Latency", elem_id="compare-latency")
        gr.Markdown("### A labelled set")
        with gr.Row():
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Labelled set")
            server = gr.Dropdown(list(manifests), value=(next(iter(manifests)) if manifests else None), label="Server manifest (shared data)")
            upload = gr.File(label="Manifest CSV (path,label[,text,split]; paths absolute or relative to the shared data)",
                             file_types=[".csv"], type="filepath")
        with gr.Row():
            split = gr.Textbox(value="val", label="Split (empty: all rows)")
            max_rows = gr.Slider(10, MAX_MANIFEST_ROWS, value=100, step=10, label="At most this many clips (stratified, seeded)")
            set_btn = gr.Button("Evaluate all models", variant="primary", elem_id="compare-set")
        set_md = gr.Markdown("", elem_id="compare-set-result")
        confusion = gr.Plot(label="Confusion matrices", elem_id="confusion-chart")

    @C.user_errors
    def compare_clip(video, request: gr.Request, progress=gr.Progress()):
        path, _ = pick_input(video, None, None)
        uploads.check_upload(path, ctx.settings.max_upload_mb)  # no media: refused before the models load
        names = ctx.predictor.model_names("all")
        if not names:
            raise EmoWebError(f"no trained model is available for the {ctx.settings.profile!r} backbone profile")
        pred = ctx.predictor.predict(path, "all", progress=stage_progress(progress, names))
        rows, probs = [], {}
        for m, out in pred.outputs.items():
            p = {lab: float(v) for lab, v in zip(out.labels, out.probs[0].tolist())}
            probs[m] = p
            rows.append([display_name(m), out.label if pred.decided else "no decision", round(p[out.label], 3), round(1000 * pred.latency.get(m, 0.0), 2),
                         ", ".join(out.modality_probs) or "-", "; ".join(out.notes)])
        return (rows, F.probability_figure(C.shown_names(probs)),
                F.latency_figure(C.stage_times(pred.features.timings), C.shown_names(dict(pred.latency))))

    @C.user_errors
    def compare_set(source_value, profile_ref, server_value, upload_value, split_value, max_rows_value, request: gr.Request,
                    progress=gr.Progress(track_tqdm=True)):
        if source_value == SOURCES[0]:
            profile = ctx.profile(profile_ref, request)
            entries = [e for e in ctx.service.labelling_queue(profile.id) if e.label]
            if not entries:
                raise EmoWebError(f"profile {profile.name!r} has no labelled clip yet")
            labels = C.ordered_labels(list(profile.labels) + [e.label for e in entries])
            reports = comparison.stored_answer_reports(entries, labels)
            snaps = [s for s in ctx.service.snapshots(profile.id) if s["active"]]
            heading = (f"**{C.esc(profile.name)}**: {len(entries)} labelled clip(s); answers are each model's latest stored "
                       "answer (with the cache active at that time).")
            for s in snaps:
                m = s.get("metrics") or {}
                if m.get("before") is not None or m.get("after") is not None:
                    judged = bool((s.get("hyper") or {}).get("judged"))
                    heading += (f"\n\nActive cache of {C.model_name(s['model'])} (snapshot {s['id']}): leave-one-out accuracy "
                                f"(model alone → with the cache) {C.esc(accuracy_text(judged, m.get('before'), m.get('after')))}.")
            return _report_markdown(reports, heading, {}), F.confusion_figure(C.shown_names(reports))
        if source_value == SOURCES[1]:
            if not server_value or server_value not in manifests:
                raise EmoWebError("choose one of the server manifests")
            path, uploaded = manifests[server_value], False
        else:
            if not upload_value:
                raise EmoWebError("upload a manifest CSV first")
            path, uploaded = Path(upload_value), True
        split_value = (split_value or "").strip()
        rows, total = comparison.capped_rows(ctx.settings, path, split_value, int(max_rows_value or 100), uploaded)
        n = len(rows)
        capped = comparison.write_manifest(rows, Path(ctx.temp_text("manifest.csv", "")))
        progress(0.05, desc=f"encoding {n} clip(s) (each once; cached afterwards)")
        result = comparison.evaluate_all(ctx.settings, capped)  # the capped rows are the split
        reports = result["reports"]
        name = server_value if not uploaded else Path(upload_value).name
        skipped = list(result.get("skipped") or [])
        heading = (f"**{C.esc(name)}**, split {C.esc(split_value or 'all')}: {result['n']} clip(s) evaluated "
                   f"({n} sampled of {total} rows, at most {int(max_rows_value)}), {len(skipped)} skipped; "
                   f"backbone profile {C.esc(result['profile'])}, measured {C.esc(result['measured_at'])}.")
        if skipped:
            heading += "\n\n" + "\n".join(f"- skipped: {C.esc(s)}" for s in skipped[:10])
        latency = {m: r.get("latency_ms_per_clip") for m, r in reports.items()}
        return _report_markdown(reports, heading, latency), F.confusion_figure(C.shown_names(reports))

    C.report_errors(clip_btn.click(compare_clip, [clip], [clip_table, clip_probs, clip_latency], api_name="compare_clip", **heavy),
                    error)
    C.report_errors(set_btn.click(compare_set, [source, profile_dd, server, upload, split, max_rows], [set_md, confusion],
                                  api_name="compare_set", **heavy), error)
    return {}
