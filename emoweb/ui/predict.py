"""Predict tab: upload or record a clip (video, audio or image), progress stage by stage, then one answer
first (a vote of the models, how sure in words, who, what was heard) and a compact table of the models;
the plots that explain each model's decision are in folded sections. When several people are seen, a
"Whose face" selector asks the models about another one, and the words heard can be corrected (or a text
typed with no clip) and read again (the session keeps the analysed features: `services.reanalyse`)."""
import inspect
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from emoweb.errors import EmoWebError, MediaError
from emoweb.services import reanalyse
from emoweb.services.headline import RULE, Headline, headline
from emoweb.ui import common as C
from emoweb.ui import figures as F

STAGE_NAMES = {
    "decode": "decoding the clip",
    "faces": "finding faces",
    "visual": "visual encoder (face crops)",
    "asr": "transcribing speech (Whisper)",
    "audio_encoder": "audio encoder",
    "text": "text encoder",
}
TRANSCRIPT_HEADERS = ["start (s)", "end (s)", "text"]
MODEL_HEADERS = ["model", "answer", "probability", "used the profile's examples"]
KINDS = ("Video", "Audio only", "Image only")


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


def _face_thumbnail(feats: Any) -> np.ndarray | None:
    """The face the clip is about: the crop of the first frame with a face box (None: no face found)."""
    if feats.face_crops is None:
        return None
    for i, box in enumerate(feats.face_boxes):
        if box is not None and i < len(feats.face_crops):
            return np.asarray(feats.face_crops[i])
    return None


def headline_markdown(head: Headline, labels: list[str]) -> str:
    """The answer in large type with its emoji and colour, and how sure, in words."""
    if head.label is None:
        return "## No answer\nNothing to recognise in this clip: no face, no voice and no words."
    emoji = C.LABEL_EMOJI.get(head.label, "🏷️")
    colour = C.label_colour(head.label, labels)
    return (f'<div class="emoweb-answer" style="border-left: 10px solid {colour}">'
            f'<span class="emoweb-answer-label">{emoji} {C.esc(head.label)}</span>'
            f'<span class="emoweb-answer-sure"> — {C.esc(head.confidence)}</span></div>\n\n'
            f"{C.esc(head.reason)} (average probability {100 * head.mean_prob:.0f}%; how this is formed: below)")


def explain(ctx: C.AppContext, prediction: Any, answers: dict | None, profile: Any, clip: Any, new: bool | None,
            typed: bool = False) -> tuple:
    """The Predict tab's outputs from a Prediction (features + model outputs) and, when the clip was
    stored in a profile, the service's answers (with the profile's cache). `typed`: the words were typed."""
    feats, outputs = prediction.features, prediction.outputs
    models = list(outputs)
    probs = {m: dict(answers[m].probs) if answers and m in answers else _row(out.probs, out.labels) for m, out in outputs.items()}
    decided = {m: prediction.model_decided(m) and (answers[m].decided if answers and m in answers else True) for m in models}
    labels = C.ordered_labels([lab for p in probs.values() for lab in p])

    # the one answer, then who, what was heard, whether the profile's examples were used, where it is stored
    head = headline({m: probs[m] for m in models if decided[m]}, untrained=feats.untrained_weights)
    lines = [headline_markdown(head, labels)]
    face = _face_thumbnail(feats)
    other = feats.person != 1
    if other:
        track = feats.face_tracks[feats.person - 1]
        lines.append(f"**Who:** the person {C.esc(track['position'])} (seen in {track['frames']} of {track['of']} frames), "
                     "chosen instead of the main person. **The voice and the words may belong to someone else.**")
    elif feats.kind not in ("audio", "text"):
        lines.append(f"**Who:** {'the face shown here' if face is not None else 'no face found'}"
                     f" (a face in {feats.faces_found} of {len(feats.frame_times)} frames)"
                     + ("; another person can be chosen under “Whose face”" if len(feats.face_tracks) > 1 else ""))
    if feats.transcript:
        lines.append(f"**{'Words (typed)' if typed else 'Heard'}:** “{C.esc(feats.transcript)}”")
    elif typed:
        lines.append("**Words:** removed, so the words are not read")
    elif feats.kind != "image":
        lines.append("**Heard:** no words recognised")
    snaps = {m: answers[m].cache_snapshot for m in models if answers and m in answers}
    if other:
        lines.append("**Not saved:** this answer about another person is shown here only; no profile's labelled "
                     "examples were used.")
    elif typed:
        lines.append("**Not saved:** this answer with typed words is shown here only; no profile's labelled examples "
                     "were used.")
    elif profile is None:
        lines.append("**Profile:** none chosen, so nothing was saved and no labelled examples were used.")
    else:
        used = [m for m, s in snaps.items() if s is not None]
        lines.append(f"**Profile {C.esc(profile.name)}:** " + (
            f"its labelled examples were used by {len(used)} of {len(models)} models." if used else
            "its labelled examples were not used (none in its cache yet: label clips, then rebuild in the Label tab)."))
        what = "Saved as new clip" if new else "Already saved as clip"
        lines.append(f"{what} **#{clip.id}**: label it in the Label tab.")
    summary = "\n\n".join(lines)

    table = []
    for m in models:
        p = probs[m]
        best = max(p, key=p.get) if p and decided[m] else None
        table.append([m, f"{C.LABEL_EMOJI.get(best, '')} {best}".strip() if best else "no decision",
                      f"{100 * p[best]:.0f}%" if best else "-",
                      "-" if profile is None else ("yes" if snaps.get(m) is not None else "no")])

    # warnings (something missing or unreliable) apart from information (how each model works)
    warnings = list(feats.warnings)
    if feats.untrained_weights:
        warnings.append("the models run on random (untrained) weights: answers are meaningless")
    warnings_md = ("⚠️ **Something was missing or unreliable:**\n" + "\n".join(f"- {C.esc(w)}" for w in warnings)) if warnings else ""
    for w in feats.warnings[:3]:
        gr.Warning(w)
    info = [
        f"{C.esc(feats.source)}: {C.esc(feats.kind)}"
        + ("" if feats.kind in ("image", "text") else f", {feats.duration:.1f} s analysed")
        + (f" of {feats.full_duration:.1f} s" if feats.full_duration > feats.duration + 0.05 else "")
        + f"; backbone profile {C.esc(feats.profile)} on {C.esc(feats.device)}; transcript language {C.esc(feats.language or '-')}"
        + "; modalities: " + ", ".join(f"{C.esc(k)} {'yes' if v else 'no'}" for k, v in feats.modalities.items())
    ]
    for m, out in outputs.items():
        info += [f"{C.esc(m)}: {C.esc(n)}" for n in out.notes]
    info_md = "\n".join(f"- ℹ️ {line}" for line in info)

    # per-modality decisions
    decisions = {}
    for m, out in outputs.items():
        d = {mod: _row(p, out.labels) for mod, p in out.modality_probs.items()}
        d["fused"] = probs[m]
        decisions[m] = d

    # similarities: to label texts and to the nearest labelled clips of the profile
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
                info_clip = ctx.clip_in(profile, cid)
                if info_clip.kind not in ("video", "image"):
                    continue
                gallery_near.append((ctx.temp_copy(ctx.service.media_path(cid), f"clip{cid}{Path(info_clip.media_path).suffix}"),
                                     f"clip {cid} · {lab} · similarity {sim:.2f} ({m})"))
            except (EmoWebError, OSError):
                continue

    # frames, crops, timeline, transcript
    frames_gallery, crops_gallery = [], []
    if feats.frames is not None:
        for i, t in enumerate(feats.frame_times):
            box = feats.face_boxes[i] if i < len(feats.face_boxes) else None
            frames_gallery.append((F.draw_boxes(feats.frames[i], box), f"{t:.2f} s · {'face' if box else 'no face'}"))
            if feats.face_crops is not None and i < len(feats.face_crops):
                crops_gallery.append((np.asarray(feats.face_crops[i]), f"{t:.2f} s"))
    timeline_probs = None
    if feats.visual_logits is not None and feats.visual_logit_labels:
        timeline_probs = C.softmax(feats.visual_logits.detach().float().cpu().numpy())
    timeline = F.timeline_figure(
        feats.frame_times, timeline_probs, list(feats.visual_logit_labels), [b is not None for b in feats.face_boxes] or [True] * len(feats.frame_times),
        feats.segments, feats.duration,
    )
    transcript = [[round(float(s.get("start", 0)), 2), round(float(s.get("end", 0)), 2), str(s.get("text", ""))] for s in feats.segments]
    if not transcript:
        transcript = [[0.0, round(feats.duration, 2), feats.transcript or "(no speech recognised)" if feats.modalities.get("audio") or feats.kind != "image" else "(no audio)"]]

    raw = prediction.to_summary()
    raw["clip"].pop("sha256", None)
    raw["headline"] = head.to_dict()
    if clip is not None:
        raw["stored"] = {"clip_id": clip.id, "profile": profile.name, "new": new,
                         "answers": {m: a.to_dict() for m, a in (answers or {}).items()}}
    return (
        summary,
        F.probability_figure({m: p for m, p in probs.items() if decided[m]}),
        F.modality_figure(decisions),
        F.attention_figure(_attention_maps(outputs)),
        F.similarity_figure(tables, labels),
        gallery_near or None,
        timeline,
        transcript,
        frames_gallery or None,
        crops_gallery or None,
        F.latency_figure({k: v for k, v in feats.timings.items() if k != "total"}, dict(prediction.latency)),
        raw,
        str(clip.id) if clip is not None else "",
        face,
        table,
        gr.update(value=warnings_md, visible=bool(warnings)),
        info_md,
    )


def person_choices(feats: Any) -> dict:
    """The 'Whose face' selector: one choice per person seen (value = their number, 1 = the main person),
    shown only when there is more than one, set to the person the answer is about."""
    tracks = feats.face_tracks if feats is not None else []
    choices = [(f"the person {t['position']} ({t['frames']}/{t['of']} frames)" + (", the main person" if t["main"] else ""),
                t["person"]) for t in tracks]
    return gr.update(choices=choices, value=feats.person if len(tracks) > 1 else None, visible=len(tracks) > 1)


def pick_input(video: Any, audio: Any, image: Any) -> tuple[Path, str]:
    for value, source in ((video, "video"), (audio, "audio"), (image, "image")):
        if isinstance(value, dict):  # gradio_client may send {"video": ..., "subtitles": ...}
            value = value.get("video") or value.get("path")
        if value:
            return Path(str(value)), source
    raise EmoWebError("upload or record a clip first (video, audio or image)")


def build(ctx: C.AppContext, profile_dd: gr.Dropdown, heavy: dict) -> dict:
    with gr.Tab("Predict", id="predict"):
        gr.Markdown("Choose or record a short clip, then press **Analyse**. Choose a profile at the top to keep the clip "
                    "for labelling.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                kind = gr.Radio(list(KINDS), value=KINDS[0], label="What to analyse", elem_id="predict-kind")
                video = gr.Video(label="Video (upload or webcam)", sources=["upload", "webcam"], include_audio=True,
                                 height=280, elem_id="predict-video")
                audio = gr.Audio(label="Audio (upload or microphone)", sources=["upload", "microphone"], type="filepath",
                                 visible=False, elem_id="predict-audio")
                image = gr.Image(label="Image (upload or webcam)", type="filepath", sources=["upload", "webcam"], height=280,
                                 visible=False, elem_id="predict-image")
                run = gr.Button("Analyse", variant="primary", elem_id="predict-run")
                gr.Markdown(f"Up to {ctx.settings.max_seconds:g} s of a clip is analysed; files up to "
                            f"{ctx.settings.max_upload_mb:g} MB.", elem_classes="emoweb-small")
            with gr.Column(scale=2, min_width=300):
                with gr.Row(equal_height=False):
                    summary = gr.Markdown("No clip analysed yet.", elem_id="predict-summary")
                    face = gr.Image(label="Who", interactive=False, height=140, width=140, scale=0, min_width=140,
                                    elem_id="predict-face", buttons=[])
                models_table = gr.Dataframe(headers=MODEL_HEADERS, datatype=["str"] * 4, label="Each model's answer",
                                            interactive=False, elem_id="predict-models", wrap=True)
                person = gr.Radio([], label="Whose face (the voice and the words stay the clip's)", visible=False,
                                  elem_id="predict-person")
                with gr.Row(equal_height=True):
                    words = gr.Textbox(label="Words: type a text, or correct what was heard", lines=2, scale=4,
                                       elem_id="predict-words")
                    words_run = gr.Button("Read these words", scale=1, elem_id="predict-words-run")
                warnings_md = gr.Markdown("", visible=False, elem_id="predict-warnings", elem_classes="emoweb-warning")
                with gr.Accordion("How the answer is formed", open=False, elem_id="predict-how"):
                    gr.Markdown(RULE)
        with gr.Accordion("All probabilities", open=False, elem_id="fold-probs"):
            prob_plot = gr.Plot(label="Probabilities (all models)", elem_id="prob-chart")
        with gr.Accordion("What the face, the voice and the words each said", open=False, elem_id="fold-modality"):
            modality_plot = gr.Plot(label="Per-modality decisions", elem_id="modality-chart")
        with gr.Accordion("Where the models looked (attention)", open=False, elem_id="fold-attention"):
            attention_plot = gr.Plot(label="Attention", elem_id="attention-chart")
        with gr.Accordion("Similar labelled clips and label texts", open=False, elem_id="fold-similar"):
            nearest = gr.Gallery(label="Nearest labelled clips of the profile", columns=3, height=220, elem_id="nearest")
            similarity_plot = gr.Plot(label="Similarities", elem_id="similarity-chart")
        with gr.Accordion("Transcript, frames and the per-frame timeline", open=False, elem_id="fold-frames"):
            transcript = gr.Dataframe(headers=TRANSCRIPT_HEADERS, datatype=["number", "number", "str"],
                                      label="Transcript with timestamps", interactive=False, elem_id="transcript", wrap=True)
            with gr.Row():
                frames = gr.Gallery(label="Sampled frames with the face box", columns=8, height=220, elem_id="frames")
                crops = gr.Gallery(label="Face crops (what the visual encoder saw)", columns=8, height=220, elem_id="crops")
            timeline = gr.Plot(label="Per-frame timeline", elem_id="timeline")
        with gr.Accordion("How each model worked, and how long it took", open=False, elem_id="fold-info"):
            info_md = gr.Markdown("", elem_id="predict-info")
            latency_plot = gr.Plot(label="Latency", elem_id="latency-chart")
        with gr.Accordion("Raw result (JSON)", open=False):
            raw = gr.JSON(label="summary")
        clip_out = gr.Textbox(visible=False, elem_id="predict-clip-id")
        # the last analysed clip's features and answer (the main person's), for the selector; in memory only, for a while
        analysed = gr.State(None, time_to_live=60 * ctx.settings.analysed_minutes)

    def choose(which):
        """Show the chosen input only, and empty the others: Analyse takes what is shown."""
        return [gr.update(visible=True) if which == k else gr.update(visible=False, value=None) for k in KINDS]

    kind.change(choose, kind, [video, audio, image], api_visibility="undocumented")

    @C.user_errors
    def predict(video, audio, image, profile_ref, request: gr.Request, progress=gr.Progress()):
        path, source = pick_input(video, audio, image)
        if not path.is_file():
            raise MediaError(f"file not found: {path.name}")
        size_mb = path.stat().st_size / 2**20
        if size_mb > ctx.settings.max_upload_mb:
            raise MediaError(f"file too large: {size_mb:.0f} MB, the limit is {ctx.settings.max_upload_mb:g} MB")
        profile = None
        if profile_ref and str(profile_ref) != C.NO_PROFILE:
            profile = ctx.profile(profile_ref, request)
            ctx.check_room(profile, path)
        progress(0.0, desc="loading models")
        predictor = ctx.predictor
        names = predictor.model_names("all")
        if not names:
            raise EmoWebError(f"no trained model is available for the {ctx.settings.profile!r} backbone profile")
        report = stage_progress(progress, names)
        if profile is None:
            prediction = predictor.predict(path, "all", progress=report)
            return remembered(prediction, explain(ctx, prediction, None, None, None, None))
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
        return remembered(prediction, explain(ctx, prediction, result.predictions, profile, result.clip, result.new))

    def remembered(prediction: Any, shown: tuple) -> tuple:
        """The outputs with the selector and the words heard, and the session's memory of them: the features to
        ask about another person or other words, and the answer shown, given back as it was when the clip's
        own person and words are chosen again."""
        feats = prediction.features
        return (*shown, person_choices(feats), feats.transcript,
                {"analysed": reanalyse.Analysed(feats, feats), "shown": shown})

    def shown_again(last: dict | None, prediction: Any, analysed: reanalyse.Analysed) -> tuple:
        """The outputs and the session's memory after a second look (prediction None: the first analysis
        again; `analysed.current is analysed.first`: a typed text, a first analysis of its own)."""
        if prediction is None:
            return (*last["shown"], person_choices(analysed.current), {**last, "analysed": analysed})
        shown = explain(ctx, prediction, None, None, None, None, typed=analysed.typed)
        first = analysed.current is analysed.first
        return (*shown, person_choices(prediction.features), {"analysed": analysed, "shown": shown if first else last["shown"]})

    @C.user_errors
    def predict_person(choice, last, progress=gr.Progress()):
        """The answer about the chosen person of the last analysed clip (1 = the main person: the answer shown first)."""
        if last is None:
            raise EmoWebError("analyse a clip first, then choose whose face")
        if choice is None or str(choice).strip() == "":
            raise EmoWebError("choose whose face: a person's number, 1 = the main person")
        try:
            number = int(choice)
        except (TypeError, ValueError):
            raise EmoWebError(f"whose face: {choice!r} is not a person's number (1 = the main person)") from None
        predictor = ctx.predictor
        report = stage_progress(progress, predictor.required_models())
        return shown_again(last, *reanalyse.again(predictor, last["analysed"], person=number, progress=report))

    @C.user_errors
    def predict_words(text, last, progress=gr.Progress()):
        """The answer with the typed words: in place of the last analysed clip's transcript, or alone."""
        predictor = ctx.predictor
        report = stage_progress(progress, predictor.required_models())
        return shown_again(last, *reanalyse.words(predictor, last and last["analysed"], text or "", report))

    outputs = [summary, prob_plot, modality_plot, attention_plot, similarity_plot, nearest, timeline, transcript, frames, crops,
               latency_plot, raw, clip_out, face, models_table, warnings_md, info_md, person]
    event = run.click(predict, [video, audio, image, profile_dd], outputs + [words, analysed], api_name="predict", **heavy)
    person.input(predict_person, [person, analysed], outputs + [analysed], api_name="predict_person", **heavy)
    words_run.click(predict_words, [words, analysed], outputs + [analysed], api_name="predict_words", **heavy)
    return {"event": event, "clip_out": clip_out, "run": run}
