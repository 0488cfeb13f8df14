"""The clip's one answer for a parent: a vote of the models that answered, and how sure it is in words.

How sure comes from three things: how many models agree, whether a model that says it is confident
(its calibrated probability at or above the level at which it was right 8 times in 10 on held-out
data, its card's `calibration.not_sure.below`), and whether the face and the voice point the same way.
A model without a calibrated card counts by agreement alone. The rule, in `RULE`, is shown in the UI and the README word for word.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emoweb.pipeline.inference import Prediction
    from emoweb.services.records import ClipResult

FAIRLY_SURE = "fairly sure"
PROBABLY = "probably"
NOT_SURE = "not sure"
NO_ANSWER = "no answer"

RULE = (
    "Each model that answered votes for its own top label; the answer is the label with the most votes "
    "(a tie goes to the label whose probability, averaged over every model that answered, is higher). A model is *confident* when its "
    "calibrated probability is at least the level at which it was right 8 times in 10 on held-out clips. "
    "**fairly sure** when every model (at least two) agrees and one of them is confident, **probably** "
    "when more than half agree (and, if every model agrees, none is confident), otherwise **not sure** "
    "(also when more than half agree but none is confident, with a single model, or with untrained weights). "
    "Whatever the models agree on, it is **not sure** when the face and the voice point to different labels: "
    "most models' own face decision against most models' own voice decision."
)


@dataclass(frozen=True)
class Headline:
    """The one answer shown first. `label` None: no model had anything to go by."""

    label: str | None
    confidence: str  # FAIRLY_SURE, PROBABLY, NOT_SURE or NO_ANSWER
    agree: int  # models whose own top label is `label`
    models: int  # models that answered
    mean_prob: float  # average probability of `label` over the models that answered, 0..1
    reason: str  # one line: why this confidence
    confident: tuple[str, ...] = ()  # the models at or above their confidence level in their own answer (`label` or not)

    def to_dict(self) -> dict:
        """The headline as JSON (the UI's raw output and `predict --json`), with the rule that formed it."""
        return {"label": self.label, "confidence": self.confidence, "agree": self.agree, "models": self.models,
                "mean_prob": round(self.mean_prob, 4), "reason": self.reason, "confident": list(self.confident), "rule": RULE}


def _top(probs: Mapping[str, float]) -> str:
    return max(probs, key=lambda lab: probs[lab])


def _vote(decisions: list[Mapping[str, float]]) -> tuple[str, int]:
    """The label most of `decisions` rank first (a tie: the higher total probability), and its votes."""
    votes: dict[str, int] = {}
    for d in decisions:
        votes[_top(d)] = votes.get(_top(d), 0) + 1
    label = max(votes, key=lambda lab: (votes[lab], sum(d.get(lab, 0.0) for d in decisions)))
    return label, votes[label]


SENSE_NAMES = {"audio": "the voice", "visual": "the face"}  # the words are left out: most sentences carry no emotion


def sense_conflict(senses: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str | None:
    """'the voice says sadness, the face says neutral' when face and voice point to different labels, else None.
    `senses`: {model: {sense: {label: p}}}, each model's own decision per sense it read. A sense's label is
    the top label of most models (a tie: the higher mean probability). Why: the models are trained and
    calibrated on clips whose face and voice show the same emotion, so when they differ the models'
    agreement on one of them says nothing about the clip."""
    said: dict[str, str] = {}
    for sense in SENSE_NAMES:
        decisions = [p[sense] for p in senses.values() if p.get(sense)]
        if decisions:
            said[sense] = _vote(decisions)[0]
    if len(set(said.values())) < 2:
        return None
    return ", ".join(f"{SENSE_NAMES[m]} says {said[m]}" for m in SENSE_NAMES if m in said)


def headline(answers: Mapping[str, Mapping[str, float]], untrained: bool = False,
             confident_at: Mapping[str, float] | None = None,
             senses: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> Headline:
    """The headline from each answering model's probabilities ({model: {label: p}}); models with no
    probabilities (no decision) are left out. `untrained`: the backbones run on random weights.
    `confident_at`: {model: the calibrated probability from which it counts as confident}; without it
    (models not calibrated) how sure comes from agreement alone. `senses`: each model's own decision per
    sense ({model: {sense: {label: p}}}); when face and voice point to different labels the answer is
    not sure (`sense_conflict`)."""
    answers = {m: p for m, p in answers.items() if p}
    n = len(answers)
    if not n:
        # the clip may hold nothing, or only what the models asked cannot read (Foal-Net reads no words)
        return Headline(None, NO_ANSWER, 0, 0, 0.0, "no model asked found a face, a voice or words it reads")
    label, agree = _vote(list(answers.values()))
    mean = sum(p.get(label, 0.0) for p in answers.values()) / n
    # a model is confident in its own answer, whatever the vote: the same probability reads the same everywhere
    confident = [m for m, p in answers.items() if confident_at and m in confident_at and p[_top(p)] >= confident_at[m]]
    sure = [m for m in confident if _top(answers[m]) == label]  # the confident ones that back the answer
    calibrated = bool(confident_at) and any(m in confident_at for m in answers)
    backed = not calibrated or bool(sure)
    why = "" if not calibrated else f", {len(sure)} of them confident" if sure else ", none of them confident"
    if untrained:
        confidence, reason = NOT_SURE, "the models run on untrained weights"
    elif n == 1:
        confidence, reason = NOT_SURE, "only one model answered, so there is no agreement to go by"
    elif agree == n:
        confidence, reason = (FAIRLY_SURE if backed else PROBABLY), f"{'both' if n == 2 else f'all {n}'} models agree{why}"
    elif 2 * agree > n and backed:
        confidence, reason = PROBABLY, f"{agree} of {n} models agree{why}"
    elif 2 * agree > n:
        confidence, reason = NOT_SURE, f"{agree} of {n} models agree{why}"
    else:
        confidence, reason = NOT_SURE, f"the models disagree (only {agree} of {n} say this)"
    conflict = sense_conflict({m: senses[m] for m in answers if m in senses}) if senses else None
    if conflict and confidence != NOT_SURE:
        confidence, reason = NOT_SURE, f"{conflict}, so the models' agreement does not settle it ({reason})"
    return Headline(label, confidence, agree, n, float(mean), reason, tuple(confident))


def of_prediction(prediction: Prediction, confident_at: Mapping[str, float] | None = None) -> Headline:
    """The headline of a clip run through the models now and not stored (the Predict tab without a profile,
    `predict` on the command line): each deciding model's probabilities and its own decision per sense."""
    answers = {m: dict(zip(out.labels, out.probs[0].tolist())) for m, out in prediction.outputs.items() if prediction.model_decided(m)}
    return headline(answers, prediction.features.untrained_weights, confident_at, prediction.sense_decisions())


# A stored clip without its per-sense decisions: the rule above could not be checked, and the reason says so.
UNCOMPARED = "face and voice not compared (the clip was stored before EmoWeb kept each sense's decision)"


def of_clip(result: ClipResult, confident_at: Mapping[str, float] | None = None, untrained: bool = False) -> Headline:
    """A stored clip's headline, in the words the Predict tab shows for it: the deciding models' answers
    and the per-sense decisions stored at ingest (`ClipResult.senses`), so the Label tab, the CLI and the
    Predict tab word the same clip the same way. A clip stored before those were kept is worded by the
    other rules, and unless that already makes it not sure, its reason says face and voice were not compared."""
    head = headline({m: p.probs for m, p in result.predictions.items() if p.decided}, untrained, confident_at, result.senses)
    if result.senses is None and head.confidence not in (NOT_SURE, NO_ANSWER):
        return replace(head, reason=f"{head.reason}; {UNCOMPARED}")
    return head
