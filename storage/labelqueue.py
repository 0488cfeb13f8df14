"""Order of the caregiver's labelling queue: what a person should look at first."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import Clip


@dataclass(frozen=True)
class QueueItem:
    clip: Clip
    label: str | None  # current label; None: not labelled yet
    top_labels: dict[str, str]  # model -> top label of its latest prediction on the clip
    margin: float | None  # smallest top1 - top2 margin among those predictions; None: none yet
    senses_differ: bool = False  # the face and the voice point to different labels (the caller's rule decides)

    @property
    def disagree(self) -> bool:
        """Two models' latest predictions name different top labels, or the face and the voice differ: either
        way the answer shown is "not sure", so a person should look."""
        return len(set(self.top_labels.values())) > 1 or self.senses_differ


def sort_key(item: QueueItem) -> tuple[bool, bool, bool, float, int]:
    """Sort key of the queue, ascending. In priority order:

    1. unlabelled clips before labelled ones;
    2. then clips the models (or the face and the voice) disagree on before the others;
    3. then clips with a prediction before clips without any (those have no margin to rank);
    4. then the smallest margin first (the least sure model decides);
    5. then the oldest clip first (lowest id), so the order is total and stable.
    """
    return (
        item.label is not None,
        not item.disagree,
        item.margin is None,
        item.margin if item.margin is not None else 0.0,
        item.clip.id,
    )
