"""Predict tab: upload or record a clip (video, audio or image), progress stage by stage, then one answer
first (a vote of the models, how sure in words, who, what was heard) and a compact table of the models;
the plots that explain each model's decision are in folded sections. When several people are seen, a
"Whose face" selector asks the models about another one, and the words heard can be corrected (or a text
typed with no clip) and read again (the session keeps the analysed features: `services.reanalyse`)."""
import inspect
from pathlib import Path
from typing import Any

import gradio as gr

from emoweb.errors import EmoWebError, NotFoundError
from emoweb.services import reanalyse, uploads
from emoweb.services.headline import RULE
from emoweb.services.modelinfo import display_name
from emoweb.ui import common as C
from emoweb.ui.explain import explain, person_choices
from emoweb.ui.picturebox import PictureBox

TRANSCRIPT_HEADERS = ["start (s)", "end (s)", "text"]
MODEL_HEADERS = ["model", "answer", "probability", "used the profile's examples"]
KINDS = ("Video", "Audio only", "Image only")
SHOW_ANSWER_JS = """() => { if (window.innerWidth < 700) document.getElementById('predict-summary')?.scrollIntoView({block: 'start'}); }"""


def stage_progress(progress: Any, models: list[str]):
    """A `progress(stage)` callback for the feature pipeline and the models, shown by gr.Progress."""
    order = list(C.STAGE_NAMES) + list(models)

    def report(stage: str) -> None:
        i = order.index(stage) if stage in order else len(order) - 1
        desc = C.STAGE_NAMES.get(stage) or f"model {display_name(stage)}"
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
                # image_mode None: the upload itself is analysed (and stored), never a re-encoded second copy
                # that deleting the clip would not find by its content
                image = PictureBox(label="Image (upload or webcam)", type="filepath", sources=["upload", "webcam"], height=280,
                                   visible=False, elem_id="predict-image", image_mode=None)
                run = gr.Button("Analyse", variant="primary", elem_id="predict-run")
                error = C.error_box("predict-error")
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
        # galleries show whole pictures ("contain"): a cropped thumbnail can cut off the face or its box
        with gr.Accordion("Similar labelled clips and label texts", open=False, elem_id="fold-similar"):
            nearest = gr.Gallery(label="Nearest labelled clips of the profile that have a picture (all of them: the chart below)",
                                 columns=3, height=220, elem_id="nearest", object_fit="contain")
            similarity_plot = gr.Plot(label="How alike", elem_id="similarity-chart")
        with gr.Accordion("Transcript, frames and the per-frame timeline", open=False, elem_id="fold-frames"):
            transcript = gr.Dataframe(headers=TRANSCRIPT_HEADERS, datatype=["number", "number", "str"],
                                      label="Transcript with timestamps", interactive=False, elem_id="transcript", wrap=True)
            with gr.Row():
                frames = gr.Gallery(label="Sampled frames with the face box", columns=4, height=220, elem_id="frames",
                                    object_fit="contain")
                crops = gr.Gallery(label="Face crops (what the visual encoder saw)", columns=4, height=220, elem_id="crops",
                                   object_fit="contain")
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
        uploads.check_upload(path, ctx.settings.max_upload_mb)  # no media: refused before the models load
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
            return remembered(prediction, explain(ctx, prediction, None, None), None)
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
        clip = result.clip
        shown = explain(ctx, prediction, result, profile, folder=ctx.shown_folder(profile, clip.id))
        return remembered(prediction, shown, (profile.id, clip.id))

    def remembered(prediction: Any, shown: tuple, stored: tuple[int, int] | None) -> tuple:
        """The outputs with the selector and the words heard, and the session's memory of them: the features to
        ask about another person or other words, the answer shown, given back as it was when the clip's
        own person and words are chosen again, and `stored`: (profile id, clip id) of a stored clip."""
        feats = prediction.features
        return (*shown, person_choices(feats), feats.transcript,
                {"analysed": reanalyse.Analysed(feats, feats), "shown": shown, "stored": stored})

    def stored_folder(stored: tuple[int, int] | None) -> Path | None:
        """The shown folder of a stored clip, (profile id, clip id) (None: no clip stored): what a second
        look shows of it is deleted with it. A clip deleted since is refused (one line)."""
        if stored is None:
            return None
        try:
            return ctx.service.shown_folder(*stored)
        except NotFoundError:
            raise EmoWebError(f"clip #{stored[1]} was deleted since: analyse a clip again") from None

    def shown_again(last: dict | None, prediction: Any, analysed: reanalyse.Analysed) -> tuple:
        """The outputs and the session's memory after a second look (prediction None: the first analysis
        again; `analysed.current is analysed.first`: a typed text, a first analysis of its own, of no clip)."""
        if prediction is None:
            stored_folder(last.get("stored"))  # a clip deleted since is refused, not shown from its files gone
            return (*last["shown"], person_choices(analysed.current), {**last, "analysed": analysed})
        first = analysed.current is analysed.first
        stored = None if first else last.get("stored")
        shown = explain(ctx, prediction, None, None, typed=analysed.typed, folder=stored_folder(stored))
        return (*shown, person_choices(prediction.features),
                {"analysed": analysed, "shown": shown if first else last["shown"], "stored": stored})

    @C.user_errors
    def predict_person(choice, last, request: gr.Request, progress=gr.Progress()):
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
    def predict_words(text, last, request: gr.Request, progress=gr.Progress()):
        """The answer with the typed words: in place of the last analysed clip's transcript, or alone."""
        predictor = ctx.predictor
        report = stage_progress(progress, predictor.required_models())
        return shown_again(last, *reanalyse.words(predictor, last and last["analysed"], text or "", report))

    outputs = [summary, prob_plot, modality_plot, attention_plot, similarity_plot, nearest, timeline, transcript, frames, crops,
               latency_plot, raw, clip_out, face, models_table, warnings_md, info_md, person]

    def cleared() -> list:
        """Every answer of the last clip emptied before the next is analysed: when the next cannot be
        (no media, too large), the old answer must not stay on screen beside the error, read as its."""
        return [gr.update(value=None, visible=False) if o is warnings_md else gr.update(value=None) for o in outputs]

    # the progress (and an error's badge) on the answers, never over what the person chooses or types next
    shown = {"show_progress_on": [o for o in outputs if o is not person]}
    event = C.report_errors(run.click(cleared, None, outputs, api_visibility="undocumented", queue=False).then(
        predict, [video, audio, image, profile_dd], outputs + [words, analysed], api_name="predict", **heavy, **shown), error)
    # a clip that could not be analysed leaves no earlier clip behind: its words, read again, would answer about that one
    event.failure(lambda: ("", None), None, [words, analysed], api_visibility="private", queue=False)
    # on a phone the answer lies below the clip and the button: brought into view, not left below the fold
    event.success(None, None, None, js=SHOW_ANSWER_JS, api_visibility="private", queue=False)
    C.report_errors(person.input(predict_person, [person, analysed], outputs + [analysed], api_name="predict_person", **heavy,
                                 **shown), error)
    C.report_errors(words_run.click(predict_words, [words, analysed], outputs + [analysed], api_name="predict_words", **heavy,
                                    **shown), error)
    def forget(deleted: tuple[int, int | None] | None, last: dict | None) -> list:
        """After a deletion in the Label tab, (profile id, clip id; None: the whole profile): an answer shown
        here about a clip that is gone is emptied (it said "Saved as new clip #7" beside broken pictures, and
        its words read again answered about it); any other answer stays."""
        stored = (last or {}).get("stored")
        if not deleted or stored is None or stored[0] != deleted[0] or deleted[1] not in (None, stored[1]):
            return [gr.update()] * (len(outputs) + 2)
        gone = f"Clip #{stored[1]} was deleted, so its answer is no longer shown." if deleted[1] else \
            "Its profile was deleted, so the answer about its clip is no longer shown."
        return [gone if o is summary else u for o, u in zip(outputs, cleared())] + ["", None]

    return {"event": event, "clip_out": clip_out, "run": run, "forget": forget, "forget_outputs": outputs + [words, analysed],
            "analysed": analysed}
