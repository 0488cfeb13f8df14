"""`bench asr`: the word error rate on hand-counted examples, the seeded clip draw, and one real clip
scored through the app's extractor."""
from __future__ import annotations

from pathlib import Path

import pytest

from emoweb import cli
from emoweb.cli.asr_bench import draw_clips, score_corpus, word_error_rate
from emoweb.errors import EmoWebError


def test_one_substitution_in_six_words_case_and_punctuation_ignored() -> None:
    assert word_error_rate(["Kids are talking by the door"], ["kids are talking by a door."]) == pytest.approx(1 / 6)


def test_insertion_counts_and_the_rate_pools_words_over_clips() -> None:
    # "the surface is slick" (4 words) -> "the surface is it slick": 1 insertion
    assert word_error_rate(["The surface is slick."], ["The surface, is it slick?"]) == pytest.approx(1 / 4)
    # "its eleven oclock" -> "its 11 oclock": 1 substitution of 3; "dont forget a jacket": 4 deletions of 4.
    # Pooled: 5 / 7 (the mean of the two rates would be 2/3).
    refs, hyps = ["It's eleven o'clock.", "Don't forget a jacket."], ["It's 11 o'clock.", ""]
    assert word_error_rate(refs, hyps) == pytest.approx(5 / 7)


@pytest.mark.parametrize("refs, hyps, message", [
    ([], [], "0 references for 0 transcripts"),
    (["a b"], ["a", "b"], "1 references for 2 transcripts"),
    (["..."], ["a"], "a reference sentence has no words"),
])
def test_nothing_to_score_is_a_clear_error(refs: list[str], hyps: list[str], message: str) -> None:
    with pytest.raises(EmoWebError, match=message):
        word_error_rate(refs, hyps)


def test_draw_is_seeded_from_the_split_and_capped(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    lines = ["path,label7,speaker,split,text"]
    lines += [f"a/{i}.flac,joy,s{i % 3},{'val' if i % 2 else 'train'},sentence {i}" for i in range(40)]
    lines += ["a/notext.flac,joy,s9,val,"]
    manifest.write_text("\n".join(lines) + "\n")
    first = draw_clips(manifest, "val", 5)
    assert first == draw_clips(manifest, "val", 5) and len(set(first)) == 5
    assert all(int(p.stem) % 2 == 1 and text == f"sentence {p.stem}" for p, text in first)
    everything = draw_clips(manifest, "val", 100)
    assert sorted(p.stem for p, _ in everything) == sorted(str(i) for i in range(1, 40, 2))
    with pytest.raises(EmoWebError, match="no 'test' clip with a sentence"):
        draw_clips(manifest, "test", 5)


def test_bad_clip_count_exits_with_one_line(capsys) -> None:
    assert cli.main(["bench", "asr", "--clips", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --clips must be at least 1"


def test_a_real_clip_is_transcribed_timed_and_scored(extractor, happy_speech: Path) -> None:
    sentence = "Kids are talking by the door"
    r = score_corpus(extractor, [(happy_speech, sentence)])
    clip = r["clips"][0]
    assert r["n"] == 1 and clip["transcript"].strip() and r["empty"] == 0
    assert r["wer"] == word_error_rate([sentence], [clip["transcript"]])
    assert 0 < r["asr_s"] <= r["total_s"] == clip["total_s"]
