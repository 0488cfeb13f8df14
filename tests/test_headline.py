"""The Predict page's headline (a vote of the models, how sure in words) and honest attention maps:
flat attention renders flat on a fixed colour range, a peaked one renders peaked, and each map's
one-line reading says which."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import plotly_text
from emoweb.services import attention
from emoweb.services.headline import FAIRLY_SURE, NO_ANSWER, NOT_SURE, PROBABLY, RULE, headline


def test_every_model_agreeing_is_fairly_sure_and_the_vote_counts_models_not_probabilities() -> None:
    h = headline({"a": {"joy": 0.6, "neutral": 0.4}, "b": {"joy": 0.9, "neutral": 0.1}})
    assert (h.label, h.confidence, h.agree, h.models) == ("joy", FAIRLY_SURE, 2, 2)
    assert h.mean_prob == pytest.approx(0.75)
    # the example: one model very sure of neutral, three of joy -> joy, a majority but not all
    h = headline({"emoasst": {"neutral": 0.92, "joy": 0.08}, "merclip": {"joy": 0.94, "neutral": 0.06},
                  "sem_mbt": {"joy": 0.56, "neutral": 0.44}, "foalnet": {"joy": 1.0, "neutral": 0.0}})
    assert (h.label, h.confidence, h.agree, h.models) == ("joy", PROBABLY, 3, 4)


def test_calibrated_models_must_also_be_confident() -> None:
    """With the cards' thresholds, agreement alone is not enough: a model confident enough to be right 8
    times in 10 must back the answer."""
    at = {"a": 0.7, "b": 0.8, "c": 0.6}
    agree_unsure = {"a": {"joy": 0.55, "fear": 0.45}, "b": {"joy": 0.6, "fear": 0.4}}
    h = headline(agree_unsure, confident_at=at)
    assert (h.label, h.confidence) == ("joy", PROBABLY) and "none of them confident" in h.reason
    agree_sure = {"a": {"joy": 0.75, "fear": 0.25}, "b": {"joy": 0.6, "fear": 0.4}}
    h = headline(agree_sure, confident_at=at)
    assert (h.confidence, h.reason) == (FAIRLY_SURE, "both models agree, 1 of them confident")
    assert h.confident == ("a",)  # b says joy at 0.6, under its 0.8
    majority = {**agree_unsure, "c": {"fear": 0.9, "joy": 0.1}}
    h = headline(majority, confident_at=at)
    assert h.confidence == NOT_SURE and "none of them confident" in h.reason  # 2 of 3 agree, neither confident
    assert h.confident == ("c",)  # c is confident in its own answer, though the vote went the other way
    majority["a"] = {"joy": 0.71, "fear": 0.29}
    assert headline(majority, confident_at=at).confidence == PROBABLY
    assert headline(agree_unsure).confidence == FAIRLY_SURE  # no calibration: agreement alone, as before


def test_disagreement_one_model_untrained_and_nothing_are_not_sure() -> None:
    split = headline({"a": {"joy": 0.9, "anger": 0.1}, "b": {"joy": 0.2, "anger": 0.8}})
    assert split.confidence == NOT_SURE and split.label == "joy"  # tie on votes: higher average probability (0.55 vs 0.45)
    assert headline({"a": {"joy": 0.99, "anger": 0.01}}).confidence == NOT_SURE
    assert headline({"a": {"joy": 0.9}, "b": {"joy": 0.8}}, untrained=True).confidence == NOT_SURE
    none = headline({"a": {}, "b": {}})
    assert (none.label, none.confidence, none.models) == (None, NO_ANSWER, 0)


def test_flat_attention_reads_equal_and_colours_at_the_middle_of_a_fixed_range() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((3, 16), 0.0625) + rng.uniform(0, 0.0003, (3, 16))  # the 0.0625-0.0628 spread
    z = attention.colour_values(flat)
    assert np.abs(z).max() < 0.01  # every frame at an equal share: one colour
    assert attention.reading(flat, "frame", [i * 0.25 for i in range(16)]) == "weighed all 16 frames about equally"
    assert attention.reading(np.ones((2, 1)), "frame", [0.0]) == "had only one of the frames to weigh"  # a photo: not "all 1"
    # a text encoder's own end marks read as such, not "[CLS]" and "[SEP]"
    assert [attention.tick_text(w, "token") for w in ("[CLS]", "happy", "[SEP]")] == ["(start)", "happy", "(end)"]


def test_peaked_attention_reads_its_span_in_seconds_and_saturates_the_colour() -> None:
    times = [i * 0.4 for i in range(10)]
    peaked = np.full((2, 10), 0.02)
    peaked[:, 3:6] = 0.3  # 1.2-2.0 s
    z = attention.colour_values(peaked)
    assert z[0, 4] == pytest.approx(np.log2(0.3 / (1.04 / 10)))  # 2.9x an equal share (row sum 1.04 over 10)
    assert z[0, 0] == -np.log2(attention.COLOUR_RANGE)  # 0.19x: clipped at the fixed range's end
    line = attention.reading(peaked, "frame", times)
    assert line.startswith("focused on 1.2-2.0 s"), line


def test_word_attention_names_the_words() -> None:
    w = np.array([[0.05, 0.8, 0.05, 0.1]])
    assert attention.reading(w, "text", ["kids", "door", "are", "by"]).startswith("focused on “door”")


def test_bad_attention_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="rows, columns"):
        attention.relative_to_equal(np.zeros(4))


def test_the_attention_figure_draws_flat_flat_and_peaked_peaked_on_one_fixed_range() -> None:
    from emoweb.ui.figures import attention_figure

    flat = np.full((1, 16), 0.0625) + np.linspace(0, 0.0003, 16)[None]
    peaked = np.full((1, 16), 0.01)
    peaked[0, 5] = 0.85
    times = {"frame": [i * 0.25 for i in range(16)]}
    fig = attention_figure([("a · flat", flat, ("query", "frame"), times), ("b · peaked", peaked, ("query", "frame"), times)])
    flat_map, peaked_map = fig.data
    for trace in fig.data:  # the same fixed range for every map, with an equal share (0) in its middle
        assert (trace.zmin, trace.zmax, trace.zmid) == (-2.0, 2.0, 0)
    assert np.ptp(np.asarray(flat_map.z)) < 0.01  # one colour
    assert np.asarray(peaked_map.z)[0, 5] == 2.0 and np.asarray(peaked_map.z)[0, 0] < -1.5
    assert "weighed all 16 frames about equally" in plotly_text(fig.layout.xaxis.title.text)
    assert "focused on 1.2 s" in plotly_text(fig.layout.xaxis2.title.text)


def test_the_readme_states_the_shortcut_keys_and_the_answer_rule_as_the_ui_does() -> None:
    from pathlib import Path

    from emoweb.ui.label import SHORTCUTS

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert SHORTCUTS in readme
    for phrase in ("votes for its own top label", "fairly sure", "more than half agree", "not sure", "right 8 times in 10"):
        assert phrase in readme and phrase in " ".join(RULE.split())


def test_face_and_voice_that_disagree_make_the_answer_not_sure() -> None:
    """Every model answering neutral, confidently, is still not sure when most models' voice says sadness
    and their face says neutral (a composite of a neutral face and a sad voice did exactly this); senses
    that agree, or a single sense, leave the answer as it was."""
    from emoweb.services.headline import sense_conflict

    answers = {m: {"neutral": 0.9, "sadness": 0.1} for m in ("a", "b", "c")}
    at = {m: 0.6 for m in answers}
    face, sad, calm = {"neutral": 0.95, "sadness": 0.05}, {"neutral": 0.4, "sadness": 0.6}, {"neutral": 0.7, "sadness": 0.3}
    split = {"a": {"visual": face, "audio": sad}, "b": {"visual": face, "audio": sad}, "c": {"visual": face, "audio": calm}}
    assert sense_conflict(split) == "the voice says sadness, the face says neutral"
    h = headline(answers, confident_at=at, senses=split)
    assert h.label == "neutral" and h.confidence == NOT_SURE
    assert h.reason == ("the voice says sadness, the face says neutral, so the models' agreement does not settle it "
                        "(all 3 models agree, 3 of them confident)")
    same = {m: {"visual": face, "audio": calm} for m in answers}
    assert sense_conflict(same) is None and headline(answers, confident_at=at, senses=same).confidence == FAIRLY_SURE
    assert sense_conflict({m: {"visual": face} for m in answers}) is None  # one sense: nothing to disagree with
    mostly = {**split, "a": {"visual": face, "audio": calm}}  # only one model's voice says sadness
    assert sense_conflict(mostly) is None
