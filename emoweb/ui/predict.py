"""Predict tab: upload or record a clip (video, audio or image), progress stage by stage, and every
model's answer with the plots that explain it."""
import inspect
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from emoweb.errors import EmoWebError, MediaError
from emoweb.ui import common as C

STAGE_NAMES = {
    "decode": "decoding the clip",
    "faces": "finding faces",
    "visual": "visual encoder (face crops)",
    "asr": "transcribing speech (Whisper)",
    "audio_encoder": "audio encoder",
    "text": "text encoder",
}
TRANSCRIPT_HEADERS = ["start (s)", "end (s)", "text"]


def stage_progress(progress: Any, models: list[str]):
    """A `progress(stage)` callback for the feature pipeline and the models, shown by gr.Progress."""
    order = list(STAGE_NAMES) + list(models)

    def report(stage: str) -> None:
        i = order.index(stage) if stage in order else len(order) - 1
        desc = STAGE_NAMES.get(stage) or f"model {stage}"
        try:
            progress(min(0.98, (i + 0.5) / len(order)), desc=desc)
        except Exception:  # noqa: BLE001 - progress is cosmetic; never fail a prediction for it
            pass

    return report


def accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _first_item(values: Any) -> Any:
    return values[0] if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)) else values


def _attention_maps(outputs: dict) -> list:
    maps = []
    for model, out in outputs.items():
        for name, (w, axes, ticks) in out.attention.items():
            arr = w.detach().float().cpu().numpy()
            while arr.ndim > 2:
                arr = arr[0]
            if arr.ndim != 2 or len(axes) != 2:
                continue
            clean = {axis: list(_first_item(v)) for axis, v in ticks.items() if v is not None}
            maps.append((f"{model} · {name.replace('_', ' ')}", arr, tuple(axes), clean))
    return maps


def _row(probs_tensor: Any, labels: list[str]) -> dict[str, float]:
    values = probs_tensor[0].detach().float().cpu().tolist() if hasattr(probs_tensor, "detach") else list(probs_tensor)
    return {lab: float(p) for lab, p in zip(labels, values)}


def explain(ctx: C.AppContext, prediction: Any, answers: dict | None, profile: Any, clip: Any, new: bool | None) -> tuple:
    """The Predict tab's outputs from a Prediction (features + model outputs) and, when the clip was
    stored in a profile, the service's answers (with the profile's cache)."""
    feats, outputs = prediction.features, prediction.outputs
    models = list(outputs)
    probs = {m: dict(answers[m].probs) if answers and m in answers else _row(out.probs, out.labels) for m, out in outputs.items()}

    # summary
    lines = []
    top = []
    for m in models:
        p = probs[m]
        best = max(p, key=p.get) if p else "?"
        top.append(f"**{C.esc(m)}**: {C.esc(best)} ({100 * p.get(best, 0):.0f}%)")
    if not prediction.decided:
        lines.append("### No decision: nothing to recognise in this clip (no voice, no frames, no words)")
    else:
        lines.append("### " + " · ".join(top) if top else "### no model answered")
    lines.append(
        f"{C.esc(feats.source)}: {C.esc(feats.kind)}"
        + ("" if feats.kind == "image" else f", {feats.duration:.1f} s analysed")
        + (f" of {feats.full_duration:.1f} s" if feats.full_duration > feats.duration + 0.05 else "")
        + f" · backbone profile **{C.esc(feats.profile)}** on {C.esc(feats.device)}"
        + f" · faces in {feats.faces_found}/{len(feats.frame_times)} frames"
        + " · modalities: " + ", ".join(f"{C.esc(k)} {'✓' if v else '✗'}" for k, v in feats.modalities.items())
    )
    if clip is not None and profile is not None:
        what = "stored as new clip" if new else "already stored (same content)"
        lines.append(f"Clip **#{clip.id}** {what} in profile **{C.esc(profile.name)}**: label it in the Label tab.")
    else:
        lines.append("Not saved (no profile chosen).")
    if feats.transcript:
        lines.append(f"Transcript ({C.esc(feats.language or '?')}): “{C.esc(feats.transcript)}”")
    notes = list(feats.warnings)
    if feats.untrained_weights:
        notes.append("backbones run on random (untrained) weights: answers are meaningless")
    for m, out in outputs.items():
        notes += [f"{m}: {n}" for n in out.notes]
        snap = answers[m].cache_snapshot if answers and m in answers else None
        if snap is not None:
            notes.append(f"{m}: few-shot cache of this profile applied (snapshot {snap})")
    for w in feats.warnings[:3]:
        gr.Warning(w)
    if notes:
        lines.append("**Notes — what was missing or special:**\n" + "\n".join(f"- ⚠ {C.esc(n)}" for n in notes))
    summary = "\n\n".join(lines)

    # per-modality decisions
    decisions = {}
    for m, out in outputs.items():
        d = {mod: _row(p, out.labels) for mod, p in out.modality_probs.items()}
        d["fused"] = probs[m]
        decisions[m] = d

    # similarities: to label texts and to the nearest labelled clips of the profile
    labels = C.ordered_labels([lab for p in probs.values() for lab in p])
    tables = []
    nearest_items: dict[int, tuple[str, float, str]] = {}
    for m, out in outputs.items():
        lt = out.similarity.get("label_text")
        if lt:
            ordered = {lab: float(lt[lab]) for lab in C.ordered_labels(list(lt))}
            tables.append((f"{m} · similarity to each label's text", ordered, {k: k for k in ordered}))
        near = answers[m].nearest if answers and m in answers else []
        if near:
            items = {f"clip {n['clip_id']} · {n['label']}": float(n["similarity"]) for n in near}
            tables.append((f"{m} · nearest labelled clips of the profile", items,
                           {f"clip {n['clip_id']} · {n['label']}": n["label"] for n in near}))
            for n in near:
                cid = n.get("clip_id")
                if cid is not None and (cid not in nearest_items or nearest_items[cid][1] < n["similarity"]):
                    nearest_items[int(cid)] = (n["label"], float(n["similarity"]), m)
        elif "nearest_labelled" in out.similarity:
            tables.append((f"{m} · nearest labelled clips", dict(out.similarity["nearest_labelled"]), {}))
    gallery_near = []
    if profile is not None:
        for cid, (lab, sim, m) in sorted(nearest_items.items(), key=lambda kv: -kv[1][1])[:6]:
            try:
                info = ctx.clip_in(profile, cid)
                if info.kind not in ("video", "image"):
                    continue
                gallery_near.append((ctx.temp_copy(ctx.service.media_path(cid), f"clip{cid}{Path(info.media_path).suffix}"),
                                     f"clip {cid} · {lab} · similarity {sim:.2f} ({m})"))
            except (EmoWebError, OSError):
                continue

    # frames, crops, timeline, transcript
    frames_gallery, crops_gallery = [], []
    if feats.frames is not None:
        for i, t in enumerate(feats.frame_times):
            box = feats.face_boxes[i] if i < len(feats.face_boxes) else None
            frames_gallery.append((C.draw_boxes(feats.frames[i], box), f"{t:.2f} s · {'face' if box else 'no face'}"))
            if feats.face_crops is not None and i < len(feats.face_crops):
                crops_gallery.append((np.asarray(feats.face_crops[i]), f"{t:.2f} s"))
    timeline_probs = None
    if feats.visual_logits is not None and feats.visual_logit_labels:
        timeline_probs = C.softmax(feats.visual_logits.detach().float().cpu().numpy())
    timeline = C.timeline_figure(
        feats.frame_times, timeline_probs, list(feats.visual_logit_labels), [b is not None for b in feats.face_boxes] or [True] * len(feats.frame_times),
        feats.segments, feats.duration,
    )
    transcript = [[round(float(s.get("start", 0)), 2), round(float(s.get("end", 0)), 2), str(s.get("text", ""))] for s in feats.segments]
    if not transcript:
        transcript = [[0.0, round(feats.duration, 2), "(no speech recognised)" if feats.modalities.get("audio") or feats.kind != "image" else "(no audio)"]]

    raw = prediction.to_summary()
    raw["clip"].pop("sha256", None)
    if clip is not None:
        raw["stored"] = {"clip_id": clip.id, "profile": profile.name, "new": new,
                         "answers": {m: a.to_dict() for m, a in (answers or {}).items()}}
    return (
        summary,
        C.probability_figure(probs),
        C.modality_figure(decisions),
        C.attention_figure(_attention_maps(outputs)),
        C.similarity_figure(tables, labels),
        gallery_near or None,
        timeline,
        transcript,
        frames_gallery or None,
        crops_gallery or None,
        C.latency_figure({k: v for k, v in feats.timings.items() if k != "total"}, dict(prediction.latency)),
        raw,
        str(clip.id) if clip is not None else "",
    )


def pick_input(video: Any, audio: Any, image: Any) -> tuple[Path, str]:
    for value, source in ((video, "video"), (audio, "audio"), (image, "image")):
        if isinstance(value, dict):  # gradio_client may send {"video": ..., "subtitles": ...}
            value = value.get("video") or value.get("path")
        if value:
            return Path(str(value)), source
    raise EmoWebError("upload or record a clip first (video, audio or image)")


def build(ctx: C.AppContext, profile_dd: gr.Dropdown, heavy: dict) -> dict:
    with gr.Tab("Predict", id="predict"):
        gr.Markdown(
            "Upload or record a short clip. The backbones run **once** and every available model answers; "
            "the plots show how each decided. Choose a profile at the top to store the clip for labelling."
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Video (upload or webcam)"):
                        video = gr.Video(label="Clip", sources=["upload", "webcam"], include_audio=True, elem_id="predict-video")
                    with gr.Tab("Audio only (upload or microphone)"):
                        audio = gr.Audio(label="Audio", sources=["upload", "microphone"], type="filepath", elem_id="predict-audio")
                    with gr.Tab("Image only"):
                        image = gr.Image(label="Image", type="filepath", sources=["upload", "webcam"], elem_id="predict-image")
                run = gr.Button("Analyse", variant="primary", elem_id="predict-run")
                gr.Markdown(
                    f"Clips longer than {ctx.settings.max_seconds:g} s are analysed up to that point; files over "
                    f"{ctx.settings.max_upload_mb:g} MB are refused. Test clips are **composites** (a face photo + a voice)."
                )
            with gr.Column(scale=2):
                summary = gr.Markdown("No clip analysed yet.", elem_id="predict-summary")
                prob_plot = gr.Plot(label="Probabilities (all models)", elem_id="prob-chart")
        transcript = gr.Dataframe(headers=TRANSCRIPT_HEADERS, datatype=["number", "number", "str"], label="Transcript with timestamps",
                                  interactive=False, elem_id="transcript", wrap=True)
        with gr.Row():
            frames = gr.Gallery(label="Sampled frames with the face box", columns=8, height=220, elem_id="frames")
            crops = gr.Gallery(label="Face crops (what the visual encoder saw)", columns=8, height=220, elem_id="crops")
        timeline = gr.Plot(label="Per-frame timeline", elem_id="timeline")
        modality_plot = gr.Plot(label="Per-modality decisions", elem_id="modality-chart")
        attention_plot = gr.Plot(label="Attention", elem_id="attention-chart")
        with gr.Row():
            similarity_plot = gr.Plot(label="Similarities", elem_id="similarity-chart")
            nearest = gr.Gallery(label="Nearest labelled clips of the profile", columns=3, height=260, elem_id="nearest")
        latency_plot = gr.Plot(label="Latency", elem_id="latency-chart")
        with gr.Accordion("Raw result (JSON)", open=False):
            raw = gr.JSON(label="summary")
        clip_out = gr.Textbox(visible=False, elem_id="predict-clip-id")

    @C.user_errors
    def predict(video, audio, image, profile_ref, request: gr.Request, progress=gr.Progress()):
        path, source = pick_input(video, audio, image)
        if not path.is_file():
            raise MediaError(f"file not found: {path.name}")
        size_mb = path.stat().st_size / 2**20
        if size_mb > ctx.settings.max_upload_mb:
            raise MediaError(f"file too large: {size_mb:.0f} MB, the limit is {ctx.settings.max_upload_mb:g} MB")
        progress(0.0, desc="loading models")
        predictor = ctx.predictor
        names = predictor.model_names("all")
        if not names:
            raise EmoWebError(f"no trained model is available for the {ctx.settings.profile!r} backbone profile")
        report = stage_progress(progress, names)
        profile = None
        if profile_ref and str(profile_ref) != C.NO_PROFILE:
            profile = ctx.profile(profile_ref, request)
        if profile is None:
            prediction = predictor.predict(path, "all", progress=report)
            return explain(ctx, prediction, None, None, None, None)
        service = ctx.service
        kwargs = {"source": "upload", "original_name": path.name}
        if accepts(service.ingest, "progress"):
            kwargs["progress"] = report
        else:
            progress(0.3, desc="decoding, faces, transcript, encoders and models")
        result = service.ingest(path, profile.id, **kwargs)
        prediction = result.outputs
        if prediction is None:  # known clip: answers come from stored features; decode again only to explain
            prediction = predictor.predict(path, "all", progress=report)
        progress(1.0, desc="done")
        return explain(ctx, prediction, result.predictions, profile, result.clip, result.new)

    outputs = [summary, prob_plot, modality_plot, attention_plot, similarity_plot, nearest, timeline, transcript, frames, crops,
               latency_plot, raw, clip_out]
    event = run.click(predict, [video, audio, image, profile_dd], outputs, api_name="predict", **heavy)
    return {"event": event, "clip_out": clip_out, "run": run}
