"""Faces in the sampled frames: BlazeFace detections linked into tracks, the main person's aligned crops.

Home video shows several people, faces half out of the picture, or nobody. Detections are linked over
the sampled frames by overlap into tracks (one per person); the main person is the track seen in most
frames (ties: the larger face, then the more central). Only that track feeds the visual models; the
others are listed, and any of them can be chosen instead (`person`) to ask about that face. Crops are rotated so the eyes lie level. No track means no face: the caller then
leaves the visual modality out instead of reading whole frames. A tight face-crop image (a face filling
the picture, as in face datasets) is too close for the short-range detector, so a frame without a face
is retried once on a copy with a black border around it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch

from emoweb.errors import EmoWebError
from models.backbones.blazeface import BlazeFaceDetector, Detection, load_blazeface, weighted_nms

CROP_SIZE = 160  # RGB crop side kept per frame; each backbone resizes to its own input
MARGIN = 0.1  # context added around the detected box, each side
RAISE = 0.1  # crop centre moved up by this share of the box height
PAD_RETRY = 0.5  # black border (fraction of the longer side) for the tight-crop retry
MIN_INSIDE = 0.6  # a box with less of its area inside the frame is a face mostly out of the picture: not used
TILE_ZOOM = 2  # the small-face retry looks at squares of half the frame's shorter side
TILE_PROBES = 4  # frames tiled first when no frame shows a face (a clip without anyone costs only these)
LINK_IOU = 0.3  # a detection continues a track when it overlaps the track's last box by more than this

Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels


@dataclass
class Track:
    """One person over the sampled frames: {frame index: detection} where seen."""

    seen: dict[int, Detection] = field(default_factory=dict)

    @property
    def last(self) -> Detection:
        return self.seen[max(self.seen)]

    def mean_box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) averaged over the frames where seen."""
        return tuple(np.mean([d.box for d in self.seen.values()], axis=0).tolist())  # type: ignore[return-value]

    def area(self) -> float:
        x0, y0, x1, y1 = self.mean_box()
        return (x1 - x0) * (y1 - y0)


@dataclass
class FaceResult:
    """The main person's box per sampled frame (None where not seen) and aligned RGB crops, all tracks
    (main first), and who was used in words. `crops` is None when no frame shows a face."""

    boxes: list[Box | None]
    crops: np.ndarray | None  # [N, CROP_SIZE, CROP_SIZE, 3] uint8
    tracks: list[dict]  # [{"person", "position", "frames", "of", "box", "main"}]
    note: str | None = None

    @property
    def found(self) -> bool:
        return self.crops is not None


@lru_cache(maxsize=1)
def detector() -> BlazeFaceDetector:
    """The process-wide BlazeFace (CPU: about 5 ms a frame, not worth a device transfer)."""
    return load_blazeface()


def _inside_fraction(det: Detection, h: int, w: int) -> float:
    """Share of the detection's box inside an h x w picture."""
    x0, y0, x1, y1 = det.box
    area = max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)
    ix = max(0.0, min(x1, w) - max(x0, 0.0))
    iy = max(0.0, min(y1, h) - max(y0, 0.0))
    return ix * iy / area


def _tiles(h: int, w: int) -> list[tuple[int, int, int]]:
    """Overlapping squares (x, y, side) of 1/TILE_ZOOM of the shorter side, covering the frame; neighbours
    overlap by a third, so a face smaller than that lies whole in at least one."""
    side = max(1, min(h, w) // TILE_ZOOM)
    step = max(1, side * 2 // 3)

    def starts(length: int) -> list[int]:
        out = list(range(0, length - side + 1, step))
        return out if out[-1] == length - side else out + [length - side]

    return [(x, y, side) for y in starts(h) for x in starts(w)]


def _shifted(det: Detection, dx: float, dy: float) -> Detection:
    x0, y0, x1, y1 = det.box
    return Detection((x0 + dx, y0 + dy, x1 + dx, y1 + dy), det.keypoints + (dx, dy), det.score)


def _tiled(frame: np.ndarray) -> list[Detection]:
    """Faces too small for the whole-frame pass (a person across the room): the detector on zoomed tiles,
    partial faces at a tile's edge dropped, the same face from overlapping tiles merged."""
    tiles = _tiles(*frame.shape[:2])
    found = detector()([frame[y : y + side, x : x + side] for x, y, side in tiles])
    dets = [_shifted(d, x, y) for (x, y, side), ds in zip(tiles, found) for d in ds if _inside_fraction(d, side, side) >= MIN_INSIDE]
    if not dets:
        return []
    merged = weighted_nms(torch.tensor([d.score for d in dets]), torch.tensor([d.box for d in dets]),
                          torch.from_numpy(np.stack([d.keypoints for d in dets])), min_score=0.0)
    return [Detection(tuple(box.tolist()), kp.numpy(), score) for score, box, kp in merged]  # type: ignore[arg-type]


def detect(frames: np.ndarray | list[np.ndarray]) -> list[list[Detection]]:
    """Faces per RGB frame (best first). A frame without one is retried with a black border (a tight face
    crop); when no frame has a face, zoomed tiles look for small ones (TILE_PROBES frames first, all frames
    only if those show a face). Faces with less than MIN_INSIDE of their box inside the frame are dropped."""
    found = detector()(list(frames))
    retry = [i for i, dets in enumerate(found) if not dets]
    if retry:
        pads = [int(PAD_RETRY * max(frames[i].shape[:2])) for i in retry]
        padded = [cv2.copyMakeBorder(frames[i], p, p, p, p, cv2.BORDER_CONSTANT, value=0) for i, p in zip(retry, pads)]
        for i, pad, dets in zip(retry, pads, detector()(padded)):
            found[i] = [_shifted(d, -pad, -pad) for d in dets]
    if not any(found):  # small faces only, or none: probe a few frames on tiles before tiling them all
        probes = sorted({round(k * (len(found) - 1) / max(1, TILE_PROBES - 1)) for k in range(TILE_PROBES)})
        for i in probes:
            found[i] = _tiled(frames[i])
        if any(found):
            for i in (i for i in range(len(found)) if i not in probes):
                found[i] = _tiled(frames[i])
    return [[d for d in dets if _inside_fraction(d, *frames[i].shape[:2]) >= MIN_INSIDE] for i, dets in enumerate(found)]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link(per_frame: list[list[Detection]]) -> list[Track]:
    """Greedy overlap linking: each frame's detections (best first) continue the free track whose last box
    they overlap most (IoU > LINK_IOU), else start a new track. Tracks survive frames where they are not seen."""
    tracks: list[Track] = []
    for i, dets in enumerate(per_frame):
        free = list(tracks)
        for det in dets:
            best = max(free, key=lambda t: _iou(t.last.box, det.box), default=None)
            if best is not None and _iou(best.last.box, det.box) > LINK_IOU:
                free.remove(best)
            else:
                best = Track()
                tracks.append(best)
            best.seen[i] = det
    return tracks


def rank(tracks: list[Track], width: int, height: int) -> list[Track]:
    """Main person first: seen in most frames, then the larger face, then the nearer the frame's centre."""

    def off_centre(t: Track) -> float:
        x0, y0, x1, y1 = t.mean_box()
        return math.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2)

    return sorted(tracks, key=lambda t: (-len(t.seen), -t.area(), off_centre(t)))


def _positions(tracks: list[Track]) -> list[str]:
    """Where each person is, in words a parent can match to the picture (left to right)."""
    if len(tracks) == 1:
        return ["in the picture"]
    centres = [(t.mean_box()[0] + t.mean_box()[2]) / 2 for t in tracks]
    order = sorted(range(len(tracks)), key=lambda i: centres[i])
    names = {order[0]: "on the left", order[-1]: "on the right"}
    for k, i in enumerate(order[1:-1], start=2):
        names[i] = "in the middle" if len(tracks) == 3 else f"{k}th from the left"
    return [names[i] for i in range(len(tracks))]


def aligned_crop(frame: np.ndarray, det: Detection, size: int = CROP_SIZE) -> np.ndarray:
    """[size, size, 3] crop around the face, rotated so the eye line is level; the frame's border is
    repeated where the crop reaches past the picture (a face at the frame's edge)."""
    x0, y0, x1, y1 = det.box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * MARGIN)
    (rx, ry), (lx, ly) = det.keypoints[0], det.keypoints[1]  # the subject's right eye is on the image's left
    angle = math.degrees(math.atan2(ly - ry, lx - rx))
    up = RAISE * (y1 - y0)  # move the centre towards the forehead, along the face's own vertical
    cx, cy = (x0 + x1) / 2 + up * math.sin(math.radians(angle)), (y0 + y1) / 2 - up * math.cos(math.radians(angle))
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def _box(det: Detection) -> Box:
    x0, y0, x1, y1 = det.box
    return int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))


def people_note(tracks: list[dict], person: int = 1) -> str | None:
    """The note naming everyone seen and whose face the answer is about (`person`: 1 = the main person, as
    numbered in `tracks`); None when one person or nobody was seen."""
    if len(tracks) < 2:
        return None
    chosen, n = tracks[person - 1], tracks[0]["of"]
    others = ", ".join(f"the person {t['position']} ({t['frames']}/{n})" for t in tracks if t is not chosen)
    if person == 1:
        return (f"{len(tracks)} people seen; the answer is about the person {chosen['position']}, seen in "
                f"{chosen['frames']}/{n} frames (also seen: {others})")
    return (f"{len(tracks)} people seen; this answer is about the person {chosen['position']}, seen in "
            f"{chosen['frames']}/{n} frames, chosen instead of the main person (also seen: {others}); "
            "the voice and the words may belong to someone else")


def detect_and_crop(frames: np.ndarray, person: int = 1) -> FaceResult:
    """Face tracks over the sampled RGB frames [N, H, W, 3]; the crops of `person` (1 = the main person, the
    numbering of `tracks`) for every frame (a frame where that person is not seen takes the nearest frame's
    detection). No face in any frame: crops None. Raises EmoWebError when `person` is not one of those seen."""
    n = len(frames)
    tracks = rank(link(detect(frames)), frames.shape[2], frames.shape[1]) if n else []
    if not tracks:
        if person != 1:
            raise EmoWebError(f"person {person} not seen: no face in this clip")
        return FaceResult([None] * n, None, [])
    if not 1 <= person <= len(tracks):
        raise EmoWebError(f"person {person} not seen: this clip shows {len(tracks)} "
                          f"{'person' if len(tracks) == 1 else 'people'} (1 to {len(tracks)})")
    chosen = tracks[person - 1]
    nearest = [chosen.seen[min(chosen.seen, key=lambda j: (abs(j - i), j))] for i in range(n)]
    crops = np.stack([aligned_crop(f, d) for f, d in zip(frames, nearest)])
    listed = [
        {"person": k + 1, "position": pos, "frames": len(t.seen), "of": n,
         "box": [round(v) for v in t.mean_box()], "main": k == 0}
        for k, (t, pos) in enumerate(zip(tracks, _positions(tracks)))
    ]
    boxes = [_box(chosen.seen[i]) if i in chosen.seen else None for i in range(n)]
    return FaceResult(boxes, crops, listed, people_note(listed, person))
