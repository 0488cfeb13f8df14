"""What the app shows a parent, in words a parent reads: model names as the papers spell them, attention
maps with plain titles and axes in their true units (MER-SEM-MBT's face-picture maps are in pixels, not
seconds), and a tab's error staying in the tab. Drawn from the real models and the real UI functions
(no app server: the browser tests drive that)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import plotly_text
from emoweb.services import attention, modelinfo
from models import DISPLAY_NAMES, MODELS

plain = plotly_text


def lines(text: str) -> list[str]:
    """A plotly title's lines as a person reads them."""
    return [plain(line) for line in text.split("<br>")]


CODE_NAMES = re.compile(r"\b(emoasst|merclip|sem_mbt|foalnet)\b|_to_|vfm|cmd_|mbt_|sem_visual|block\d")


def test_every_registry_model_has_a_display_name() -> None:
    assert set(DISPLAY_NAMES) == set(MODELS)
    assert [modelinfo.display_name(m) for m in MODELS] == ["EmoAsst", "MER-CLIP", "MER-SEM-MBT", "Foal-Net"]


def _sem_mbt_figure():
    from test_sem_mbt import make_input, small_model

    from emoweb.ui.explain import _attention_maps
    from emoweb.ui.figures import attention_figure

    out = small_model()(make_input(b=1, frames=(3,)))
    maps = _attention_maps({"sem_mbt": out})
    return maps, attention_figure(maps)


def test_mer_sem_mbt_attention_maps_have_plain_titles_and_true_units() -> None:
    """Each map's title says what it shows, with the model's display name and no variable name; the face
    picture's axes are in pixels (they were labelled in seconds), the times of frames and voice in seconds."""
    maps, fig = _sem_mbt_figure()
    titles = [plain(a.text) for a in fig.layout.annotations][: len(maps)]
    assert len(titles) == 6 and len(set(titles)) == 6, titles  # told apart: earlier / later stage of the face CNN
    for title in titles:
        assert title.startswith("MER-SEM-MBT: ") and not CODE_NAMES.search(title), title
    assert "MER-SEM-MBT: Which parts of the face picture this model looked at most (earlier stage)" in titles
    assert "MER-SEM-MBT: Which moments of the video this model looked at most" in titles
    assert "MER-SEM-MBT: Which parts of the voice this model listened to most" in titles
    for row, (_title, _w, (y_axis, x_axis), _ticks) in enumerate(maps, start=1):
        xaxis, yaxis = fig.layout[f"xaxis{'' if row == 1 else row}"], fig.layout[f"yaxis{'' if row == 1 else row}"]
        for axis, layout in ((x_axis, xaxis), (y_axis, yaxis)):
            unit = {"frame": " s", "audio_segment": " s", "row": " px", "col": " px"}.get(axis)
            ticks = list(layout.ticktext)
            if unit:
                assert all(t.endswith(unit) for t in ticks), (axis, ticks)
                assert plain(layout.title.text).split(":")[0].endswith(unit.strip()), layout.title.text
            else:
                assert not any(t.endswith((" s", " px")) for t in ticks), (axis, ticks)
            assert not CODE_NAMES.search(plain(layout.title.text)) and "_" not in plain(layout.title.text).split(":")[0], layout.title.text


def test_a_face_picture_map_reads_in_pixels_and_unknown_ticks_are_numbers_without_a_unit() -> None:
    w = np.full((1, 5), 0.05)
    w[0, 1:3] = 0.4
    assert attention.reading(w, "col", [4.8, 14.4, 24.0, 33.6, 43.2]).startswith("focused on 14.4-24.0 px")
    assert attention.reading(w, "frame").startswith("focused on “2” to “3”:")  # no times given: no seconds
    assert attention.tick_text(6.0, "row") == "6 px" and attention.tick_text(1.5, "frame") == "1.50 s"
    assert attention.tick_text(3, "layer") == "3" and attention.tick_text("door", "word") == "door"


def test_the_similarity_chart_says_how_alike_not_cosine_similarity() -> None:
    from emoweb.ui.figures import similarity_figure

    fig = similarity_figure([("EmoAsst: how alike this clip is to each label's words", {"joy": 0.8, "anger": 0.1}, {})],
                            ["joy", "anger"])
    text = plain(" ".join([fig.layout.title.text, fig.layout.xaxis.title.text, *(a.text for a in fig.layout.annotations)]))
    assert "how alike" in text.lower() and "cosine" not in text.lower()


def test_a_failed_action_leaves_its_line_for_that_page_only() -> None:
    """`user_errors` keeps the one line of a failed action for the page that asked (its error line shows it);
    another page gets no one else's error, and the line is given once."""
    import gradio as gr

    from emoweb.errors import EmoWebError
    from emoweb.ui import common as C

    @C.user_errors
    def refuse(text: str, request: gr.Request) -> str:
        raise EmoWebError(text)

    mine, other = gr.Request(session_hash="page-a"), gr.Request(session_hash="page-b")  # two pages (sessions)
    with pytest.raises(gr.Error):
        refuse("tick the box to confirm deleting the clip", request=mine)
    assert C.error_line(other).endswith("the message in the top corner says why.")
    assert C.error_line(mine) == f"{C.ERROR_LINE_START} tick the box to confirm deleting the clip"
    assert C.error_line(mine).endswith("the message in the top corner says why.")  # given once


def test_what_kind_of_file_a_clip_is_is_information_not_a_problem() -> None:
    """A photo has no sound and a sound file no pictures because the parent chose them: no yellow warning (nor a
    pop-up for every photo), while a fault still is one."""
    from emoweb.pipeline.features import TYPED_NOTE
    from emoweb.services.reanalyse import problems

    notes = ["still image: no audio", "no video track: audio only", "only a cover picture, no video track: audio only",
             TYPED_NOTE, "no face found: visual models skipped", "the audio track is silent: audio and text models skipped"]
    assert problems(notes) == ["no face found: visual models skipped", "the audio track is silent: audio and text models skipped"]


@pytest.fixture(scope="module")
def wiring(tmp_path_factory) -> tuple[list[dict], dict[str, int]]:
    """The app's event wiring as the page receives it (no model loads): dependencies, and component ids by elem_id."""
    import dataclasses

    from emoweb.config import get_settings
    from emoweb.ui import build_app

    demo = build_app(dataclasses.replace(get_settings(), data_dir=tmp_path_factory.mktemp("wiring"), database_url=""))
    ids = {c["props"]["elem_id"]: c["id"] for c in demo.config["components"] if c.get("props", {}).get("elem_id")}
    return demo.config["dependencies"], ids


@pytest.mark.parametrize("action, error_line, result", [
    ("create_profile", "profile-error", "profile-status"),
    ("lesson", "lesson-error", "lesson-result"),
    ("delete_clip", "delete-error", "delete-result"),
    ("undo", "label-error", "label-status"),
])
def test_a_failed_action_empties_its_last_result_and_says_why_beside_it(wiring, action, error_line, result) -> None:
    """"Created profile Anna" must not stand beside the refusal that followed it; the refusal goes to the error line
    of the action's own section (the delete and lesson folds have theirs, 900 px below the tab's)."""
    deps, ids = wiring
    event = next(d for d in deps if d.get("api_name") == action)
    on_failure = [d["outputs"] for d in deps if d.get("trigger_after") == event["id"] and d.get("trigger_only_on_failure")]
    assert [ids[error_line]] in on_failure and [ids[result]] in on_failure, (on_failure, ids[error_line], ids[result])


def test_a_failed_analysis_forgets_the_clip_before_it(wiring) -> None:
    """After a file that is no media, "Read these words" must not answer about the clip analysed before it."""
    deps, ids = wiring
    event = next(d for d in deps if d.get("api_name") == "predict")
    on_failure = [d["outputs"] for d in deps if d.get("trigger_after") == event["id"] and d.get("trigger_only_on_failure")]
    words = ids["predict-words"]
    assert any(words in outputs and len(outputs) == 2 for outputs in on_failure), (on_failure, words)


def test_a_label_words_chart_that_disagrees_with_the_answer_says_it_is_one_part_of_it(extractor) -> None:
    """MER-CLIP adds the face and text backbones' own decisions to its likeness to the label words, so on
    Grace Hopper's neutral face its most alike words (disgust) are not its answer (neutral): the chart's
    title says so, instead of standing beside the answer as its reason. EmoAsst's chart tops at its answer
    and keeps the plain title."""
    from conftest import OTHER_FACE
    from emoweb.pipeline.inference import Predictor
    from emoweb.ui.common import AppContext
    from emoweb.ui.explain import explain

    predictor = Predictor(extractor.settings)
    predictor.extractor = extractor
    prediction = predictor.predict(OTHER_FACE, "all")  # Grace Hopper, neutral
    alike = prediction.outputs["merclip"].similarity["label_text"]
    answer = max(dict(zip(prediction.outputs["merclip"].labels, prediction.outputs["merclip"].probs[0].tolist())).items(),
                 key=lambda kv: kv[1])[0]
    assert (max(alike, key=alike.get), answer) == ("disgust", "neutral")
    figure = explain(AppContext(extractor.settings, predictor=predictor), prediction, None, None)[4]
    titles = [plain(a.text) for a in figure.layout.annotations]
    assert "MER-CLIP: how alike this clip is to each label's words (only one part of its answer, neutral)" in titles, titles
    assert "EmoAsst: how alike this clip is to each label's words" in titles, titles


def test_the_answer_page_names_confident_models_sounds_and_stages_as_people_read_them(extractor, tmp_path) -> None:
    """On the real models: the table marks the models the headline counts as confident (README: "marked so
    beside its answer"); every model's face/voice/words bars come in one order; a video with no sound says
    so ("no words recognised" read as if someone spoke); a video with no face says that, not "audio-only";
    the latency chart names stages as the progress bar does."""
    from conftest import OTHER_FACE, ffmpeg
    from emoweb.pipeline.inference import Predictor
    from emoweb.services.headline import of_prediction
    from emoweb.ui.common import AppContext, STAGE_NAMES
    from emoweb.ui.explain import SENSE_WORDS, explain

    predictor = Predictor(extractor.settings)
    predictor.extractor = extractor
    ctx = AppContext(extractor.settings, predictor=predictor)
    silent = tmp_path / "silent.mp4"  # Grace Hopper's photo as a 2-s video without a sound track
    ffmpeg("-loop", "1", "-i", OTHER_FACE, "-t", "2", "-r", "10", "-vf", "scale=320:-2", "-pix_fmt", "yuv420p", silent)
    prediction = predictor.predict(silent, "all")
    shown = explain(ctx, prediction, None, None)
    summary, modality, table, latency = shown[0], shown[2], shown[14], shown[10]
    assert "**Heard:** no sound to listen to" in summary, summary
    confident = {row[0] for row in table if row[2].endswith(", confident")}
    expected = {modelinfo.display_name(m) for m in of_prediction(prediction, predictor.confident_at(list(prediction.outputs))).confident}
    assert confident == expected and confident, (table, expected)
    bars = [list(trace.y) for trace in modality.data if trace.name == "joy"]  # one row of senses per model
    assert bars and all(b == [SENSE_WORDS[k] for k in SENSE_WORDS if SENSE_WORDS[k] in b] for b in bars), bars
    assert {trace.name for trace in latency.data} >= {STAGE_NAMES["decode"], STAGE_NAMES["faces"]}, [t.name for t in latency.data]

    # plotly never wraps text: every title, subplot title and axis reading is broken into lines a phone's
    # chart holds (they ran off both sides at 390 px)
    for figure in (shown[1], shown[2], shown[3], shown[4], shown[6], shown[10]):
        texts = [figure.layout.title.text or "", *(a.text for a in figure.layout.annotations)]
        texts += [axis.title.text or "" for name, axis in figure.layout.to_plotly_json().items() if name.startswith(("xaxis", "yaxis"))
                  for axis in [getattr(figure.layout, name)]]
        long = [line for t in texts for line in lines(t) if len(line) > 46]
        assert not long, long

    faceless = tmp_path / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10:duration=2", "-pix_fmt", "yuv420p", faceless)
    nothing = explain(ctx, predictor.predict(faceless, "all"), None, None)
    assert [a.text for a in nothing[6].layout.annotations] == ["no per-frame timeline: no face found in any frame"]
    assert nothing[0].startswith("## No answer\nNo model asked found a face, a voice or words it reads."), nothing[0]
    # no empty boxes: "Who" only with a face, the alike clips only with a profile's clips to show
    assert shown[13]["visible"] and not nothing[13]["visible"] and not shown[5]["visible"]
