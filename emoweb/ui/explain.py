"""The Predict tab's answer, shown: one prediction (and the caregiver service's stored answers, when the
clip was kept) turned into the headline, the models' table, the folded plots that explain each model's
decision, the transcript, the face seen and the "Whose face" choices. Only formats; `predict` runs."""
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from emoweb.errors import EmoWebError
from emoweb.services import attention, modelinfo, reanalyse
from emoweb.services.headline import Headline, of_prediction
from emoweb.services.records import ClipResult
from emoweb.ui import common as C
from emoweb.ui import figures as F


SENSE_WORDS = {"visual": "face", "audio": "voice", "text": "words", "fused": "all together"}  # the modality chart's bars


def _first_item(values: Any) -> Any:
    return values[0] if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)) else values


def _attention_maps(outputs: dict) -> list:
    """The [rows, columns] attention maps of every model, each with a plain title (`attention.map_titles`)."""
    maps = []
    for model, out in outputs.items():
        for w, axes, ticks in out.attention.values():
            arr = w.detach().float().cpu().numpy()
            while arr.ndim > 2:
                arr = arr[0]
            if arr.ndim != 2 or len(axes) != 2:
                continue
            clean = {axis: list(_first_item(v)) for axis, v in ticks.items() if v is not None}
            maps.append((modelinfo.display_name(model), arr, tuple(axes), clean))
    titles = attention.map_titles([(model, axes) for model, _, axes, _ in maps])
    return [(title, *rest) for title, (_, *rest) in zip(titles, maps)]


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


def _part_note(alike: dict[str, float], answer: str | None) -> str:
    """What a label-words chart must add when its most alike label is not the model's answer: the answer
    weighs more than this likeness (the face and text backbones' own decisions, added as residuals, and the
    profile's labelled clips when its cache was used), so the chart must not read as its reason. '' otherwise."""
    if answer is None or not alike or max(alike, key=alike.get) == answer:
        return ""
    return f" (only one part of its answer, {answer})"


def headline_markdown(head: Headline, labels: list[str]) -> str:
    """The answer in large type with its emoji and colour, and how sure, in words."""
    if head.label is None:
        return f"## No answer\n{C.esc(head.reason[:1].upper() + head.reason[1:])}."
    emoji = C.LABEL_EMOJI.get(head.label, "🏷️")
    colour = C.label_colour(head.label, labels)
    return (f'<div class="emoweb-answer" style="border-left: 10px solid {colour}">'
            f'<span class="emoweb-answer-label">{emoji} {C.esc(head.label)}</span>'
            f'<span class="emoweb-answer-sure"> — {C.esc(head.confidence)}</span></div>\n\n'
            f"{C.esc(head.reason)} (average probability {100 * head.mean_prob:.0f}%; how this is formed: below)")


def explain(ctx: C.AppContext, prediction: Any, result: ClipResult | None, profile: Any,
            typed: bool = False, folder: Path | None = None) -> tuple:
    """The Predict tab's outputs from a Prediction (features + model outputs) and, when the clip was
    stored in `profile`, the service's result (answers with the profile's cache, worded as the Label tab
    words them: `CaregiverService.headline`). `typed`: the words were typed.
    `folder`: the stored clip's shown folder (`AppContext.shown_folder`), where its face, frames and crops
    are written, so deleting the clip deletes them; None: a clip not stored."""
    feats, outputs = prediction.features, prediction.outputs
    answers, clip, new = (result.predictions, result.clip, result.new) if result is not None else (None, None, None)
    models = list(outputs)
    probs = {m: dict(answers[m].probs) if answers and m in answers else _row(out.probs, out.labels) for m, out in outputs.items()}
    decided = {m: prediction.model_decided(m) and (answers[m].decided if answers and m in answers else True) for m in models}
    labels = C.ordered_labels([lab for p in probs.values() for lab in p])

    # the one answer, then who, what was heard, whether the profile's examples were used, where it is stored
    head = ctx.service.headline(result) if result is not None else of_prediction(prediction, ctx.predictor.confident_at(models))
    lines = [headline_markdown(head, labels)]
    face = _face_thumbnail(feats)
    other = feats.person != 1
    if other:
        track = feats.face_tracks[feats.person - 1]
        lines.append(f"**Who:** the person {C.esc(track['position'])} (seen in {track['frames']} of {track['of']} frames), "
                     "chosen instead of the main person. **The voice and the words may belong to someone else.**")
    elif feats.kind not in ("audio", "text"):
        lines.append(f"**Who:** {'the face shown here' if face is not None else 'no face found'}"
                     + ("" if feats.kind == "image" else f" (a face in {feats.faces_found} of {len(feats.frame_times)} frames)")
                     + ("; another person can be chosen under “Whose face”" if len(feats.face_tracks) > 1 else ""))
    if feats.transcript:
        lines.append(f"**{'Words (typed)' if typed else 'Heard'}:** “{C.esc(feats.transcript)}”")
    elif typed:
        lines.append("**Words:** removed, so the words are not read")
    elif feats.kind != "image":  # a sound with no speech in it, or no sound to listen to (no track, silent, too short)
        lines.append("**Heard:** " + ("no words recognised" if feats.audio is not None else "no sound to listen to"))
    snaps = {m: answers[m].cache_snapshot for m in models if answers and m in answers}
    if other:
        lines.append("**Not saved:** this answer about another person is shown here only; no profile's labelled "
                     "examples were used.")
    elif typed:
        lines.append("**Not saved:** this answer with typed words is shown here only; no profile's labelled examples "
                     "were used.")
    elif profile is None:
        lines.append("**Profile:** none chosen, so the clip is not kept: the copy this page plays is deleted within "
                     f"{C.UPLOAD_KEPT_HOURS:g} hours, and no labelled examples were used.")
    else:
        used = [m for m, s in snaps.items() if s is not None]
        lines.append(f"**Profile {C.esc(profile.name)}:** " + (
            f"its labelled examples were used by {len(used)} of {len(models)} models." if used else
            "its labelled examples were not used (none in its cache yet: label clips, then rebuild in the Label tab)."))
        what = "Saved as new clip" if new else "Already saved as clip"
        lines.append(f"{what} **#{clip.id}**: " + ("label it in the Label tab." if head.label is not None else
                                                   "it holds nothing the models read, so labelling it teaches them nothing "
                                                   "(delete it in the Label tab if it is not wanted)."))
    summary = "\n\n".join(lines)

    table = []
    best_of = {m: max(probs[m], key=probs[m].get) if probs[m] and decided[m] else None for m in models}
    for m in models:
        p, best = probs[m], best_of[m]
        table.append([modelinfo.display_name(m), f"{C.LABEL_EMOJI.get(best, '')} {best}".strip() if best else "no decision",
                      (f"{100 * p[best]:.0f}%" + (", confident" if m in head.confident else "")) if best else "-",
                      "-" if profile is None else ("yes" if snaps.get(m) is not None else "no")])

    # warnings (something missing or unreliable) apart from information (how each model works)
    warnings = reanalyse.problems(feats.warnings)
    if feats.untrained_weights:
        warnings.append("the models run on random (untrained) weights: answers are meaningless")
    warnings_md = ("⚠️ **Something was missing or unreliable:**\n" + "\n".join(f"- {C.esc(w)}" for w in warnings)) if warnings else ""
    for w in warnings[:3]:
        gr.Warning(w)
    info = [
        f"{C.esc(feats.source)}: {C.esc(feats.kind)}"
        + ("" if feats.kind in ("image", "text") else f", {feats.duration:.1f} s analysed")
        + (f" of {feats.full_duration:.1f} s" if feats.full_duration > feats.duration + 0.05 else "")
        + f"; backbone profile {C.esc(feats.profile)} on {C.esc(feats.device)}; transcript language {C.esc(feats.language or '-')}"
        + "; modalities: " + ", ".join(f"{C.esc(k)} {'yes' if v else 'no'}" for k, v in feats.modalities.items())
    ]
    info += [C.esc(w) for w in feats.warnings if w not in warnings]  # e.g. the words were typed by the person
    for m, out in outputs.items():
        info += [f"{C.model_name(m)}: {C.esc(n)}" for n in out.notes]
    info_md = "\n".join(f"- ℹ️ {line}" for line in info)

    # per-modality decisions
    decisions = {}
    for m, out in outputs.items():
        # the same order of bars for every model (face, voice, words, all together), whatever order it reports
        d = {SENSE_WORDS.get(mod, mod): _row(out.modality_probs[mod], out.labels)
             for mod in sorted(out.modality_probs, key=lambda k: list(SENSE_WORDS).index(k) if k in SENSE_WORDS else len(SENSE_WORDS))}
        d[SENSE_WORDS["fused"]] = probs[m]
        decisions[m] = d

    # similarities: to label texts and to the nearest labelled clips of the profile
    tables = []
    nearest_items: dict[int, tuple[str, float, str]] = {}
    for m, out in outputs.items():
        shown = modelinfo.display_name(m)
        lt = out.similarity.get("label_text")
        if lt:
            ordered = {lab: float(lt[lab]) for lab in C.ordered_labels(list(lt))}
            tables.append((f"{shown}: how alike this clip is to each label's words"
                           + _part_note(ordered, best_of[m]), ordered, {k: k for k in ordered}))
        near = answers[m].nearest if answers and m in answers else []
        if near:
            items = {f"clip {n['clip_id']} · {n['label']}": float(n["similarity"]) for n in near}
            tables.append((f"{shown}: the most alike labelled clips of the profile", items,
                           {f"clip {n['clip_id']} · {n['label']}": n["label"] for n in near}))
            for n in near:
                cid = n.get("clip_id")
                if cid is not None and (cid not in nearest_items or nearest_items[cid][1] < n["similarity"]):
                    nearest_items[int(cid)] = (n["label"], float(n["similarity"]), shown)
        elif "nearest_labelled" in out.similarity:
            tables.append((f"{shown}: the most alike labelled clips", dict(out.similarity["nearest_labelled"]), {}))
    gallery_near = []
    if profile is not None:
        for cid, (lab, sim, m) in sorted(nearest_items.items(), key=lambda kv: -kv[1][1])[:6]:
            try:
                info_clip = ctx.clip_in(profile, cid)
                if info_clip.kind not in ("video", "image"):
                    continue
                gallery_near.append((ctx.clip_media(profile, info_clip), f"clip {cid} · {lab} · how alike {sim:.2f} ({m})"))
            except (EmoWebError, OSError):
                continue

    # frames, crops, timeline, transcript
    frames_gallery, crops_gallery = [], []
    if feats.frames is not None:
        for i, t in enumerate(feats.frame_times):
            box = feats.face_boxes[i] if i < len(feats.face_boxes) else None
            frames_gallery.append((C.shown_image(folder, F.draw_boxes(feats.frames[i], box)),
                                   f"{t:.2f} s · {'face' if box else 'no face'}"))
            if feats.face_crops is not None and i < len(feats.face_crops):
                crops_gallery.append((C.shown_image(folder, np.asarray(feats.face_crops[i])), f"{t:.2f} s"))
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
        F.probability_figure(C.shown_names({m: p for m, p in probs.items() if decided[m]})),
        F.modality_figure(C.shown_names(decisions)),
        F.attention_figure(_attention_maps(outputs)),
        F.similarity_figure(tables, labels),
        gr.update(value=gallery_near or None, visible=bool(gallery_near)),  # no empty box where no clip is alike
        timeline,
        transcript,
        frames_gallery or None,
        crops_gallery or None,
        F.latency_figure(C.stage_times(feats.timings), C.shown_names(dict(prediction.latency))),
        raw,
        str(clip.id) if clip is not None else "",
        gr.update(value=None if face is None else C.shown_image(folder, face), visible=face is not None),
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
