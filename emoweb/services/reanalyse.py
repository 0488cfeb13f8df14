"""The Predict tab's second looks at an analysed clip: another face, other words, or a typed text alone.

The session keeps the clip's first analysis (`Analysed.first`, whose answer used the profile's examples)
and the features now shown (`current`); each change starts from `current`, so a chosen face keeps typed
words and typed words keep the chosen face. Only the changed part runs again (faces + visual encoder, or
the text encoder); nothing is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from emoweb.pipeline import media
from emoweb.pipeline.features import TEXT_KIND, TYPED_NOTE, ClipFeatures, Progress
from emoweb.pipeline.inference import Prediction, Predictor


def problems(notes: list[str]) -> list[str]:
    """A clip's notes that say something is missing or unreliable: all but those that are information, not a
    problem: the words were typed by the person (`TYPED_NOTE`), and what kind of file it is (a photo has no
    sound, a sound file no pictures: `media.STILL_IMAGE_NOTE`, `media.AUDIO_ONLY_NOTE_END`)."""
    return [n for n in notes if n not in (TYPED_NOTE, media.STILL_IMAGE_NOTE) and not n.endswith(media.AUDIO_ONLY_NOTE_END)]


@dataclass(frozen=True)
class Analysed:
    first: ClipFeatures  # the analysis whose answer was shown first
    current: ClipFeatures  # the features of the answer shown now

    @property
    def typed(self) -> bool:
        """Whether the words now read were typed (a text alone, or a correction of the transcript)."""
        return self.current.kind == TEXT_KIND or self.current.transcript != self.first.transcript


def words(
    predictor: Predictor, analysed: Analysed | None, text: str, progress: Progress | None = None
) -> tuple[Prediction | None, Analysed]:
    """The answer with `text` as the words: in place of the analysed clip's transcript (`again`), or alone
    when no clip was analysed or the last analysis was a typed text (then it is a first analysis of its own).
    Raises EmoWebError for an empty text with no clip."""
    if analysed is not None and analysed.first.kind != TEXT_KIND:
        return again(predictor, analysed, text=text, progress=progress)
    prediction = predictor.predict_text(text, progress=progress)
    return prediction, Analysed(prediction.features, prediction.features)


def again(
    predictor: Predictor, analysed: Analysed, person: int | None = None, text: str | None = None, progress: Progress | None = None
) -> tuple[Prediction | None, Analysed]:
    """The answer with `person`'s face (numbering of the clip's face tracks) or `text` as the words (typed,
    or a correction; '' removes them). The prediction is None when the result is the first analysis again
    (its shown answer stands). Raises EmoWebError for a person not seen or an empty text with no clip."""
    if person is not None:
        prediction = predictor.predict_person(analysed.current, person, progress=progress)
    else:
        prediction = predictor.predict_transcript(analysed.current, text or "", progress=progress)
    feats, first = prediction.features, analysed.first
    if (feats.person, feats.transcript) == (first.person, first.transcript):
        return None, Analysed(first, first)
    return prediction, Analysed(first, feats)
