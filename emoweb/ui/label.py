"""Label tab (caregiver session), in a parent's words: play a clip, see what the models think, label it
in one tap (keys 1-9), note, undo. The queue with its margins, the cache rebuild with before/after
accuracy, lesson videos, export/import and deleting are in folded sections."""
from pathlib import Path

import gradio as gr

from emoweb.errors import EmoWebError, NotFoundError, UnknownLabelError
from emoweb.safetext import decode
from emoweb.services.cachebuild import TUNING_WORDS, accuracy_text, still_needed, too_few_to_judge
from emoweb.services import lessons, reanalyse
from emoweb.services import modelinfo
from emoweb.ui import common as C
from emoweb.ui import figures as F

QUEUE_HEADERS = ["clip", "name", "label", "models' answers", "margin", "disputed"]
SHORTCUTS = "keys 1-9 pick the first nine labels"  # stated the same in the README
HISTORY_HEADERS = ["when (UTC)", "label", "who", "note"]  # who: the signed-in caregiver, when there is one
MAX_IMPORT_BYTES = 10 * 2**20
NEW_LABEL_BOX = "add it to the profile's labels if new"
LESSON_CLIP, LESSON_SAME, LESSON_EACH = "this clip", "all clips with this clip's label", "one clip of each label"
MAX_LESSONS_SHOWN = 10
# what the Label tab says before a clip is shown: where its clips come from, not only "pick one"
NO_CLIP_HINT = ("Pick a clip. None to pick? Choose the child's profile at the top, then analyse clips in the Predict "
                "tab with that profile chosen: they are kept there for labelling.")

KEYBOARD_JS = """
() => {
  if (window.__emowebKeys) return;
  window.__emowebKeys = true;
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    if (!/^[1-9]$/.test(e.key)) return;
    const btn = document.getElementById('label-btn-' + e.key);
    if (!btn || btn.offsetParent === null || btn.disabled) return;  // only while the Label tab shows it
    e.preventDefault();
    btn.click();
  });
}
"""


def tuning_of(record) -> str:
    """How a cache's settings were set, in words (`cachebuild.TUNING_WORDS`), from a rebuild record or a
    hyper dict; ', fitted adapter' when the rebuild switched the fitted adapter on instead of the cache's votes."""
    get = record.get if isinstance(record, dict) else (lambda k, d=None: getattr(record, k, d))
    tuning = get("tuning")
    if not tuning and get("tuned") is not None:  # snapshots written before "tuning" was recorded
        tuning = "cv" if get("tuned") else "default"
    if not tuning:
        return "-"
    return TUNING_WORDS.get(str(tuning), str(tuning)) + (", fitted adapter" if get("method") == "adapter" else "")


def _queue_rows(entries) -> list[list]:
    rows = []
    for e in entries:
        answers = ", ".join(f"{m}: {lab}" for m, lab in sorted(C.shown_names(e.top_labels).items())) or "-"
        rows.append([e.clip_id, e.original_name, e.label or "(unlabelled)", answers,
                     None if e.margin is None else round(float(e.margin), 3),
                     "models differ" if e.models_differ else "face ≠ voice" if e.senses else ""])
    return rows


def _clip_choice(e) -> tuple[str, str]:
    return (f"#{e.clip_id} {e.original_name} [{e.label or 'unlabelled'}]", str(e.clip_id))


def rebuild_view(profile_name: str, results: dict, before: int, after: int) -> tuple[str, object]:
    """What a cache rebuild did (`ModelRebuild` per model; `before`/`after`: the profile's snapshot counts):
    the text and the before/after chart. Accuracy is shown only for the models the rebuild could judge;
    for the others the text and the chart say the same thing: too few clips to judge (`too_few_to_judge`)."""
    lines = [f"Rebuilt the caches of **{C.esc(profile_name)}** from its labelled clips:", "",
             "| model | what the rebuild did |", "|---|---|"]
    for m, r in results.items():
        todo = "" if r.judged or not r.n else f"; to measure it, label {still_needed(r.n_per_label)}"
        lines.append(f"| {C.model_name(m)} | {C.esc(r.outcome + todo)} |")
        if r.skipped:
            lines.append(f"\n⚠ {C.model_name(m)}: {r.skipped} labelled clip(s) without stored features were skipped")
    lines += ["", "<details><summary>Details for experts: settings and accuracy</summary>", "",
              f"Cache snapshots {before} → {after}. Accuracy is measured on the profile's labelled clips, each one "
              "answered without its own entry (leave-one-out; for a fitted adapter, by a fit without it). *How much your "
              "clips count* (alpha): 0 = not at all, the model answers alone (with a fitted adapter: the adapter answers "
              "instead). *How closely alike a clip must be to count* (beta): higher, only the most alike clips count.", "",
              "| model | labelled clips | per label | how much your clips count (alpha) | how closely alike (beta) | "
              "set by | accuracy: model alone → with your clips | seconds |",
              "|---|---:|---|---:|---:|---|---|---:|"]
    for m, r in results.items():
        lines.append(f"| {C.model_name(m)} | {r.n} | {C.esc(modelinfo.per_label_text(r.n_per_label))} | {r.alpha:.2f} | {r.beta:.2f} | {C.esc(tuning_of(r))} | "
                     f"{C.esc(accuracy_text(r.judged, r.before, r.after))} | {r.seconds:.3f} |")
    lines.append("\n</details>")
    judged = {m: (r.before, r.after) for m, r in C.shown_names(results).items() if r.judged}
    unjudged = [m for m, r in C.shown_names(results).items() if not r.judged]
    if not judged:
        return "\n".join(lines), F.empty_figure(f"accuracy: {too_few_to_judge()}")
    fig = F.before_after_figure(judged)
    if unjudged:
        fig.add_annotation(text=C.ptext(f"not shown: {', '.join(unjudged)}, {too_few_to_judge()}"), showarrow=False,
                           x=0, y=1.0, xref="paper", yref="paper", xanchor="left", yanchor="bottom", font=dict(size=11))
    return "\n".join(lines), fig


def build(ctx: C.AppContext, profile_dd: gr.Dropdown, heavy: dict) -> dict:
    with gr.Tab("Label", id="label", elem_id="label-tab") as tab:
        gr.Markdown(
            f"Watch a clip, then tap what the child felt (on a keyboard: {SHORTCUTS}). Clips nobody labelled come "
            "first, then those the models were least sure about.", elem_classes="emoweb-small")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                clip_dd = gr.Dropdown(label="Clip", choices=[], value=None, elem_id="label-clip", allow_custom_value=True)
                show_api = gr.Button(visible=False)  # carries the /show_clip API endpoint only
                player = gr.Video(label="Clip", interactive=False, height=240, elem_id="label-video")
                player_audio = gr.Audio(label="Clip (audio)", interactive=False, visible=False, elem_id="label-audio")
                player_image = gr.Image(label="Clip (image)", interactive=False, visible=False, height=240, elem_id="label-image")
            with gr.Column(scale=3, min_width=280):
                answers_md = gr.Markdown(NO_CLIP_HINT, elem_id="label-answers")
                with gr.Row(elem_id="label-buttons"):
                    buttons = [gr.Button(f"{i + 1} · ?", visible=False, elem_id=f"label-btn-{i + 1}", min_width=90, size="sm")
                               for i in range(C.MAX_LABEL_BUTTONS)]
                note = gr.Textbox(label="Note (optional, saved with the label)", elem_id="label-note", lines=1)
                status = gr.Markdown("", elem_id="label-status")
                error = C.error_box("label-error")
                undo_btn = gr.Button("Undo my last label", elem_id="label-undo", size="sm")
                # the clips this page labelled, newest last: Undo goes back through them (never sent to the API)
                labelled = gr.State([])
        with gr.Accordion("Another label (or a new one)", open=False, elem_id="fold-other-label"):
            with gr.Row():
                label_dd = gr.Dropdown(label="Label", choices=[], allow_custom_value=True, elem_id="label-choice", scale=2)
                allow_new = gr.Checkbox(label=NEW_LABEL_BOX, value=False, scale=1)
                apply_btn = gr.Button("Apply label", variant="primary", elem_id="label-apply", scale=1)
        with gr.Accordion("This clip's labels so far, and what each model said", open=False, elem_id="fold-history"):
            history = gr.Dataframe(headers=HISTORY_HEADERS, label="Label history of this clip", interactive=False,
                                   elem_id="label-history", max_height=200, wrap=True)
            answers_plot = gr.Plot(label="What each model said", elem_id="label-answers-chart")
        with gr.Accordion("All clips of this profile (the queue)", open=False, elem_id="fold-queue"):
            refresh = gr.Button("Refresh", elem_id="queue-refresh", size="sm")
            queue = gr.Dataframe(headers=QUEUE_HEADERS, datatype=["number", "str", "str", "str", "number", "str"],
                                 label="Queue: unlabelled first, then disputed (the models disagree, or the face and the voice "
                                       "do: the answer reads 'not sure'), then the smallest margin (how far the least sure "
                                       "model's answer is ahead of its second choice, 0-1: small is unsure)", interactive=False, elem_id="queue", max_height=260,
                                 wrap=True)
        with gr.Accordion("Teach the models this profile's labels (few-shot cache)", open=False, elem_id="fold-cache"):
            gr.Markdown("The models learn from the labelled clips of this profile when the cache is rebuilt; a clip's own "
                        "label never decides its own answer.", elem_classes="emoweb-small")
            snapshot_md = gr.Markdown("", elem_id="snapshot-count")
            rebuild_btn = gr.Button("Rebuild cache", variant="primary", elem_id="rebuild")
            rebuild_md = gr.Markdown("", elem_id="rebuild-result")
            rebuild_plot = gr.Plot(label="Before / after", elem_id="rebuild-chart")
        with gr.Accordion("Lesson video: the emotion named on screen", open=False, elem_id="fold-lesson"):
            gr.Markdown("A short video to watch with the child: the part of the clip where the face and voice show "
                        "most, with the label as a big word and a face while it plays, then a card with the word. "
                        "Kept with this profile; deleting the clip or the profile deletes it.", elem_classes="emoweb-small")
            with gr.Row():
                lesson_kind = gr.Radio([(LESSON_CLIP, "clip"), (LESSON_SAME, "same"), (LESSON_EACH, "each")], value="clip",
                                       label="What to put in it", elem_id="lesson-kind")
                lesson_slow = gr.Slider(1, lessons.MAX_SLOW, value=1, step=0.25, label="Slow down (1 = real speed)",
                                        elem_id="lesson-slow")
                lesson_btn = gr.Button("Make a lesson video", variant="primary", elem_id="lesson-make")
            lesson_error = C.error_box("lesson-error")  # beside its button, not at the top of the tab
            lesson_md = gr.Markdown("", elem_id="lesson-result")
            lesson_video = gr.Video(label="The lesson just made (watch it here with the child)", interactive=False,
                                    visible=False, height=320, elem_id="lesson-video")
            lesson_files = gr.File(label="This profile's lesson videos (newest first)", file_count="multiple",
                                   interactive=False, elem_id="lesson-files")
        with gr.Accordion("Export / import labels", open=False):
            with gr.Row():
                fmt = gr.Radio(["csv", "json"], value="csv", label="Format")
                export_btn = gr.Button("Export labels", elem_id="export")
                export_file = gr.File(label="Label file", interactive=False, elem_id="export-file")
            with gr.Row():
                import_file = gr.File(label="Label file to import (CSV or JSON)", file_types=[".csv", ".json"], type="filepath")
                import_new = gr.Checkbox(label="allow labels outside the profile's set", value=False)
                import_btn = gr.Button("Import labels", elem_id="import")
            files_error = C.error_box("files-error")
            import_md = gr.Markdown("")
        with gr.Accordion("Delete", open=False, elem_id="fold-delete"):
            with gr.Row():
                confirm_clip = gr.Checkbox(label="yes, delete this clip (media, features, labels, cache entries)", value=False,
                                           elem_id="delete-clip-confirm")
                delete_clip_btn = gr.Button("Delete clip", variant="stop", elem_id="delete-clip")
            with gr.Row():
                confirm_profile = gr.Checkbox(label="yes, delete the whole profile and all its clips", value=False,
                                              elem_id="delete-profile-confirm")
                delete_profile_btn = gr.Button("Delete profile", variant="stop", elem_id="delete-profile")
            delete_error = C.error_box("delete-error")
            delete_md = gr.Markdown("", elem_id="delete-result")
            # what was just deleted, (profile id, clip id or None for the whole profile): the Predict tab
            # forgets an answer it shows about it (never sent to the API)
            deleted = gr.State(None)

    # -- actions --------------------------------------------------------------------------------

    def _snapshot_text(profile) -> str:
        snaps = ctx.service.snapshots(profile.id)
        active = [s for s in snaps if s["active"]]
        return f"Cache snapshots of **{C.esc(profile.name)}**: **{len(snaps)}** ({len(active)} active). " + \
            C.esc(modelinfo.changes_text(ctx.service.labels_since_rebuild(profile.id), modelinfo.holds_clips(snaps)))

    @C.user_errors
    def load_queue(profile_ref, current, request: gr.Request):
        hidden = [gr.update(visible=False)] * C.MAX_LABEL_BUTTONS
        if not profile_ref or profile_ref == C.NO_PROFILE:
            return [[], gr.update(choices=[], value=None), gr.update(choices=[]), "Choose or create a profile at the top.", *hidden, []]
        profile = ctx.profile(profile_ref, request)
        entries = ctx.service.labelling_queue(profile.id)
        choices = [_clip_choice(e) for e in entries]
        ids = [c[1] for c in choices]
        value = str(current) if current is not None and str(current) in ids else (ids[0] if ids else None)
        labels = list(profile.labels)
        btns = [gr.update(value=f"{i + 1} · {labels[i]}" if i < 9 else labels[i], visible=True) if i < len(labels) else gr.update(visible=False)
                for i in range(C.MAX_LABEL_BUTTONS)]
        return [_queue_rows(entries), gr.update(choices=choices, value=value), gr.update(choices=labels),
                _snapshot_text(profile), *btns, lesson_list(profile)]

    def no_clip() -> tuple:
        none = (gr.update(value=None, visible=True), gr.update(value=None, visible=False), gr.update(value=None, visible=False))
        return (*none, NO_CLIP_HINT, F.empty_figure("no clip"), [])

    @C.user_errors
    def show_clip(profile_ref, clip_id, request: gr.Request):
        """A clip of a profile: the player, what the models think, its label history. A clip of another
        profile is refused (one line)."""
        if not profile_ref or profile_ref == C.NO_PROFILE or not clip_id:
            return no_clip()
        profile = ctx.profile(profile_ref, request)
        return clip_view(profile, ctx.clip_in(profile, clip_id))

    @C.user_errors
    def show_current(profile_ref, clip_id, request: gr.Request):
        """After an action or a profile switch: the chosen clip's view, or "Pick a clip." when the choice
        is left over from the profile shown before (two event chains may interleave)."""
        if not profile_ref or profile_ref == C.NO_PROFILE or not clip_id:
            return no_clip()
        profile = ctx.profile(profile_ref, request)
        try:
            return clip_view(profile, ctx.clip_in(profile, clip_id))
        except NotFoundError:
            return no_clip()

    def clip_view(profile, clip) -> tuple:
        """The Label tab's view of a clip of `profile` (both already authorised)."""
        media = ctx.clip_media(profile, clip)
        players = (
            gr.update(value=media if clip.kind == "video" else None, visible=clip.kind == "video"),
            gr.update(value=media if clip.kind == "audio" else None, visible=clip.kind == "audio"),
            gr.update(value=media if clip.kind == "image" else None, visible=clip.kind == "image"),
        )
        result = ctx.service.predict(clip.id, profile.id)
        current = ctx.service.current_label(clip.id)
        lines = [f"**Clip #{clip.id}** {C.esc(clip.original_name)} · {C.esc(clip.kind)}"
                 + (f", {clip.duration:.1f} s" if clip.duration else "")
                 + f" · label now: **{C.esc(current) if current else 'not labelled yet'}**"]
        decided = {m: p.probs for m, p in result.predictions.items() if p.decided}
        head = ctx.service.headline(result)
        if head.label is not None:
            emoji = C.LABEL_EMOJI.get(head.label, "🏷️")
            lines.append(f"The models think: {emoji} **{C.esc(head.label)}**, {C.esc(head.confidence)}: {C.esc(head.reason)}")
            lines.append(" · ".join(f"{C.model_name(m)}: {C.esc(p.label)} {100 * p.probs.get(p.label, 0):.0f}%"
                                    for m, p in result.predictions.items() if p.decided))
        problems = reanalyse.problems(clip.notes)  # what decoding noticed when the clip was stored, as Predict showed it
        if problems:
            lines.append("⚠️ " + " · ".join(C.esc(n) for n in problems))
        for m, p in result.predictions.items():
            if not p.decided:
                lines.append(f"- **{C.model_name(m)}**: no decision ({C.esc(p.why_not)})")
        if not result.predictions:
            lines.append("- no model answer stored for this clip")
        if any(p.cache_snapshot is not None for p in result.predictions.values()):
            lines.append("(Answers use this profile's other labelled clips, never this clip's own label.)")
        details = [f"- **{C.model_name(m)}** says **{C.esc(p.label)}** ({100 * p.probs.get(p.label, 0):.0f}%, margin {p.margin:.2f})"
                   + (f" (with cache snapshot {p.cache_snapshot})" if p.cache_snapshot is not None else " (model alone)")
                   for m, p in result.predictions.items() if p.decided]
        if details:
            lines.append("<details><summary>Details per model</summary>\n\n" + "\n".join(details) + "\n\n</details>")
        hist = [[c.created.strftime("%Y-%m-%d %H:%M"), c.label if c.undoes is None else f"{c.label} undone", c.annotator, c.note]
                for c in ctx.service.corrections(clip.id)]
        fig = F.probability_figure(C.shown_names(decided), title="What each model said (with the profile's other labelled clips)")
        return (*players, "\n\n".join(lines), fig, hist)

    def _apply(profile_ref, clip_id, label, note_text, new_ok, labelled, request) -> tuple[str, list]:
        """Record the label; (the line that says so, `labelled` with the clip added when its label changed)."""
        profile = ctx.profile(profile_ref, request)
        if not clip_id:
            raise EmoWebError("pick a clip to label first")
        clip = ctx.clip_in(profile, clip_id)
        label = (label or "").strip()
        if not label:
            raise EmoWebError("choose a label")
        try:
            c = ctx.service.record_correction(clip.id, label, annotator=ctx.user(request) or "", note=note_text or "",
                                              allow_new_label=bool(new_ok), profile=profile.id)
        except UnknownLabelError as exc:
            raise EmoWebError(f"{exc}; to add it, tick '{NEW_LABEL_BOX}'") from None
        if c.unchanged:
            return f"Clip #{clip.id} is already labelled **{C.esc(c.label)}**: nothing changed", labelled
        text = f"Clip #{clip.id} labelled **{C.esc(c.label)}**" + (" (with your note, in its history)" if c.note else "")
        return text, [*(labelled or []), clip.id]

    @C.user_errors
    def label(profile, clip_id, label, note, allow_new_label, labelled, request: gr.Request):
        """Label a clip of a profile: (profile id or name, clip id, label, note, allow a new label)."""
        text, labelled = _apply(profile, clip_id, label, note, allow_new_label, labelled, request)
        return text, "", labelled

    def make_button_handler(index: int):
        @C.user_errors
        def label_button(profile_ref, clip_id, note_text, labelled, request: gr.Request):
            profile = ctx.profile(profile_ref, request)
            labels = list(profile.labels)
            if index >= len(labels):
                raise EmoWebError("no such label button")
            text, labelled = _apply(profile_ref, clip_id, labels[index], note_text, False, labelled, request)
            return text, "", labelled

        return label_button

    @C.user_errors
    def advance(profile_ref, clip_id, said, request: gr.Request):
        """After a label: the next clip nobody labelled yet (the queue's first), so a session is one tap per
        clip; the line says which. With none left the labelled clip stays shown."""
        profile = ctx.profile(profile_ref, request)
        left = [e for e in ctx.service.labelling_queue(profile.id) if e.label is None and str(e.clip_id) != str(clip_id)]
        if not left:
            return gr.update(), f"{said}. Every clip of this profile is labelled."
        return str(left[0].clip_id), f"{said}. Next: clip #{left[0].clip_id}, not labelled yet ({len(left)} to go)."

    def back_to_last(labelled, clip_id):
        """Undo acts on the clip labelled last on this page (shown again), then on the one before it; with
        none labelled here, on the clip shown."""
        if not labelled:
            return gr.update(), labelled
        return str(labelled[-1]), labelled[:-1]

    @C.user_errors
    def undo(profile_ref, clip_id, request: gr.Request):
        profile = ctx.profile(profile_ref, request)
        if not clip_id:
            raise EmoWebError("pick a clip first")
        clip = ctx.clip_in(profile, clip_id)
        r = ctx.service.undo_last_correction(clip.id, annotator=ctx.user(request) or "", profile=profile.id)
        now = r.get("current")
        return f"Undone **{C.esc(r.get('undone'))}** on clip #{clip.id}; current label: **{C.esc(now) if now else 'none'}**"

    @C.user_errors
    def rebuild(profile_ref, request: gr.Request, progress=gr.Progress()):
        profile = ctx.profile(profile_ref, request)
        progress(0.1, desc="rebuilding the cache from stored features")
        before = len(ctx.service.snapshots(profile.id))
        results = ctx.service.rebuild_cache(profile.id)
        after = len(ctx.service.snapshots(profile.id))
        if not results:
            return ("Nothing to rebuild: this profile has no clip with stored features yet.", F.empty_figure("no cache"),
                    _snapshot_text(profile))
        return (*rebuild_view(profile.name, results, before, after), _snapshot_text(profile))

    @C.user_errors
    def export_labels(profile_ref, fmt_value, request: gr.Request):
        profile = ctx.profile(profile_ref, request)
        fmt_value = fmt_value if fmt_value in ("csv", "json") else "csv"
        text = ctx.service.export_labels(profile.id, fmt_value)
        return C.shown_text(ctx.shown_folder(profile, labels=True), f"labels-{C.safe_filename(profile.name, 'profile')}.{fmt_value}", text)

    @C.user_errors
    def import_labels(profile_ref, file, allow_new_labels, request: gr.Request):
        profile = ctx.profile(profile_ref, request)
        if not file:
            raise EmoWebError("choose a label file to import")
        path = Path(file if isinstance(file, str) else getattr(file, "name", ""))
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise EmoWebError(f"label file too large (limit {MAX_IMPORT_BYTES // 2**20} MB)")
        text = decode(path.read_bytes())  # an invalid byte becomes U+FFFD, as everywhere text comes in
        fmt_value = "json" if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")) else "csv"
        report = ctx.service.import_labels(profile.id, text, fmt_value, annotator=ctx.user(request) or "",
                                           allow_new_labels=bool(allow_new_labels))
        lines = [f"Imported **{report.imported}**, unchanged {report.unchanged}, unmatched {len(report.unmatched)}, "
                 f"refused {len(report.refused)}."]
        lines += [f"- unmatched: {C.esc(u)}" for u in report.unmatched[:20]]
        lines += [f"- refused: {C.esc(r)}" for r in report.refused[:20]]
        return "\n".join(lines)

    @C.user_errors
    def make_lesson(profile_ref, clip_id, kind, slow, request: gr.Request, progress=gr.Progress()):
        profile = ctx.profile(profile_ref, request)
        steps = {"timeline": (0.1, "finding where the emotion shows"), "render": (0.3, "writing the video")}

        def report(stage: str) -> None:
            if stage in steps:
                progress(steps[stage][0], desc=steps[stage][1])

        if kind == "each":
            lesson = ctx.service.export_lesson_set(profile.id, slow=float(slow), progress=report)
        else:
            clip = ctx.clip_in(profile, clip_id)
            if kind == "same":
                label = ctx.service.current_label(clip.id)
                if not label:
                    raise EmoWebError(f"clip #{clip.id} has no label yet: label it before making a lesson")
                lesson = ctx.service.export_lesson_set(profile.id, label=label, slow=float(slow), progress=report)
            else:
                lesson = ctx.service.export_lesson(clip.id, profile.id, slow=float(slow), progress=report)
        lines = [f"Made **{C.esc(lesson.path.name)}** ({lesson.duration:.1f} s)."]
        lines += [f"- {C.esc(n)}" for n in lesson.notes]
        shown = C.shown_copy(lesson.path, ctx.shown_folder(profile) / lesson.path.name)  # deleted with its clip or profile
        return "\n".join(lines), lesson_list(profile), gr.update(value=shown, visible=True)

    def lesson_list(profile) -> list[str]:
        """The profile's newest lessons, as copies the page may serve (deleted with the clip or profile)."""
        folder = ctx.shown_folder(profile)
        return [C.shown_copy(p, folder / p.name) for p in ctx.service.list_lessons(profile.id)[:MAX_LESSONS_SHOWN]]

    @C.user_errors
    def delete_clip(profile_ref, clip_id, confirm, request: gr.Request):
        profile = ctx.profile(profile_ref, request)
        if not confirm:
            raise EmoWebError("tick the box to confirm deleting the clip")
        clip = ctx.clip_in(profile, clip_id)
        r = ctx.service.delete_clip(clip.id, profile=profile.id)
        rebuilt = ", ".join(C.model_name(m) for m in r.get("rebuilt", {})) or "none"
        return f"Deleted clip #{clip.id}; caches rebuilt without it: {rebuilt}.", False, (profile.id, clip.id)

    @C.user_errors
    def delete_profile(profile_ref, confirm, request: gr.Request):
        profile = ctx.profile(profile_ref, request)
        if not confirm:
            raise EmoWebError("tick the box to confirm deleting the profile")
        r = ctx.service.delete_profile(profile.id)
        choices = ctx.profile_choices(request)
        return (f"Deleted profile **{C.esc(profile.name)}** with {r.get('clips', 0)} clip(s).", False,
                gr.update(choices=[(C.NO_PROFILE, C.NO_PROFILE), *choices], value=C.NO_PROFILE), (profile.id, None))

    # -- wiring ---------------------------------------------------------------------------------

    queue_outputs = [queue, clip_dd, label_dd, snapshot_md, *buttons, lesson_files]
    # what people pick or type (the clip, the label buttons, the note, the confirmation boxes) is an output
    # of some actions but never carries their progress or error badge: a badge lies over what is under it
    queue_shown = {"show_progress_on": [queue, snapshot_md]}
    clip_outputs = [player, player_audio, player_image, answers_md, answers_plot, history]

    def reload(event):
        """After an action: the queue, then the clip's view."""
        return event.then(load_queue, [profile_dd, clip_dd], queue_outputs, api_visibility="undocumented", **queue_shown).then(
            show_current, [profile_dd, clip_dd], clip_outputs, api_visibility="undocumented")

    refresh_event = C.report_errors(refresh.click(load_queue, [profile_dd, clip_dd], queue_outputs, api_name="queue", **queue_shown),
                                    error)
    # Picking a clip shows it; a pick left over from the profile shown before (another event chain moved
    # on) shows "Pick a clip." The /show_clip endpoint refuses a clip outside the profile (one line). When a
    # person picks a clip or a profile, the last action's line ("Clip #3 labelled joy") is about the clip
    # shown before: it goes. After a label the next clip is shown and the line stays: it says what came next.
    C.report_errors(clip_dd.change(show_current, [profile_dd, clip_dd], clip_outputs, api_visibility="undocumented"), error,
                    clears=False)
    for picked in (clip_dd.input, queue.select, profile_dd.change):  # a person's pick, not the move to the next clip
        picked(lambda: "", None, status, api_visibility="private", queue=False)
    show_api.click(show_clip, [profile_dd, clip_dd], clip_outputs, api_name="show_clip")
    # Opening the tab shows what changed since it was last open (clips analysed, labels, rebuilds elsewhere)
    C.report_errors(tab.select(load_queue, [profile_dd, clip_dd], queue_outputs, api_visibility="undocumented", **queue_shown),
                    error, clears=False).then(
        show_current, [profile_dd, clip_dd], clip_outputs, api_visibility="undocumented")

    def pick_row(evt: gr.SelectData, rows):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return str(int(rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]))
        except Exception:  # noqa: BLE001 - a click outside the data: keep the current pick
            return gr.update()

    queue.select(pick_row, [queue], clip_dd, api_visibility="undocumented")

    def acted(event, line: gr.Markdown = error, result: gr.Markdown = status):
        """An action of this tab: its error stays in its error line (the tab's, or its section's beside its button),
        its last result line is emptied when it fails; after it, the queue and the clip's view."""
        return reload(C.report_errors(event, line, stale=[result]))

    def labelled_then_next(event):
        """A label's event: on success the next unlabelled clip is shown; either way the queue and the view."""
        event = C.report_errors(event, error, stale=[status])
        reload(event.success(advance, [profile_dd, clip_dd, status], [clip_dd, status], api_visibility="private"))
        reload(event.failure(lambda: None, None, None, api_visibility="private", queue=False))

    labelled_then_next(apply_btn.click(label, [profile_dd, clip_dd, label_dd, note, allow_new, labelled], [status, note, labelled],
                                       api_name="label", show_progress_on=[status]))
    for i, btn in enumerate(buttons):
        labelled_then_next(btn.click(make_button_handler(i), [profile_dd, clip_dd, note, labelled], [status, note, labelled],
                                     api_name=f"label_key_{i + 1}", api_visibility="undocumented", show_progress_on=[status]))
    acted(undo_btn.click(back_to_last, [labelled, clip_dd], [clip_dd, labelled], api_visibility="private", queue=False).then(
        undo, [profile_dd, clip_dd], status, api_name="undo"))
    acted(rebuild_btn.click(rebuild, [profile_dd], [rebuild_md, rebuild_plot, snapshot_md], api_name="rebuild_cache", **heavy),
          error, rebuild_md)
    lesson_event = C.report_errors(lesson_btn.click(make_lesson, [profile_dd, clip_dd, lesson_kind, lesson_slow],
                                                    [lesson_md, lesson_files, lesson_video], api_name="lesson", **heavy),
                                   lesson_error, stale=[lesson_md])
    lesson_event.failure(lambda: gr.update(value=None, visible=False), None, lesson_video, api_visibility="private", queue=False)
    C.report_errors(export_btn.click(export_labels, [profile_dd, fmt], export_file, api_name="export_labels"), files_error)
    acted(import_btn.click(import_labels, [profile_dd, import_file, import_new], import_md, api_name="import_labels"), files_error,
          import_md)
    acted(delete_clip_btn.click(delete_clip, [profile_dd, clip_dd, confirm_clip], [delete_md, confirm_clip, deleted],
                                api_name="delete_clip", show_progress_on=[delete_md]), delete_error, delete_md)
    C.report_errors(delete_profile_btn.click(delete_profile, [profile_dd, confirm_profile],
                                             [delete_md, confirm_profile, profile_dd, deleted], api_name="delete_profile",
                                             show_progress_on=[delete_md]), delete_error, stale=[delete_md])
    return {"load_queue": load_queue, "queue_inputs": [profile_dd, clip_dd], "queue_outputs": queue_outputs, "queue_shown": queue_shown,
            "show_clip": show_current, "clip_outputs": clip_outputs, "clip_dd": clip_dd, "refresh_event": refresh_event,
            "deleted": deleted}
