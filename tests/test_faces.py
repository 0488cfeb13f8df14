"""Faces as home video shows them (issue 18): BlazeFace against its TFLite reference, tight face crops,
several people, no face, a face at the frame's edge, a dark face, an EXIF-rotated portrait."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import FACE_PHOTOS, JOY_FACE, OTHER_FACE, ffmpeg
from emoweb.pipeline import faces
from models.backbones import blazeface

GREY = (118, 118, 118)
H264_ARGS = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def _photo(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _scene(width: int, height: int, placed: list[tuple[Image.Image, int, int, int]]) -> np.ndarray:
    """A grey frame with face photos pasted at (x, y) scaled to `side` px wide."""
    canvas = Image.new("RGB", (width, height), GREY)
    for photo, x, y, side in placed:
        canvas.paste(photo.resize((side, round(side * photo.height / photo.width))), (x, y))
    return np.asarray(canvas)


def test_anchors_follow_the_short_range_ssd_layout() -> None:
    anchors = blazeface.ssd_anchors()
    assert anchors.shape == (896, 2)
    # 16x16 grid (stride 8), 2 anchors a cell, row-major; then 8x8 (three stride-16 layers), 6 a cell
    assert anchors[0].tolist() == anchors[1].tolist() == [0.5 / 16, 0.5 / 16]
    assert anchors[2].tolist() == [1.5 / 16, 0.5 / 16]
    assert anchors[511].tolist() == [15.5 / 16, 15.5 / 16]
    assert all(anchors[512 + k].tolist() == [0.5 / 8, 0.5 / 8] for k in range(6))
    assert anchors[518].tolist() == [1.5 / 8, 0.5 / 8]


def test_blazeface_matches_the_tflite_reference_on_real_photos() -> None:
    """The torch detector gives the boxes, keypoints and scores the TFLite interpreter's raw outputs give
    (same letterbox, decoding and suppression), on face photos as they are and on a frame with two faces."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (requirements-dev.txt) not installed")
    where = Path(os.environ.get("EMOWEB_MEDIAPIPE_WHEELS", "/tmp/mp"))  # the folder `pip download` wrote to
    wheel = sorted(where.glob("mediapipe-0.10.21-*.whl")) if where.is_dir() else []
    if not wheel:
        pytest.skip(f"no mediapipe 0.10.21 wheel in {where} (pip download mediapipe==0.10.21 --no-deps -d {where})")
    import zipfile

    from models.backbones.convert_blazeface import TFLITE_MEMBER

    interpreter = litert.Interpreter(model_content=zipfile.ZipFile(wheel[0]).read(TFLITE_MEMBER))
    interpreter.allocate_tensors()
    outs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    det = faces.detector()
    photos = [np.asarray(_photo(p)) for p in FACE_PHOTOS]
    two = _scene(640, 360, [(_photo(FACE_PHOTOS[0]), 40, 80, 200), (_photo(OTHER_FACE), 380, 80, 200)])
    compared = 0
    for image in photos + [two]:
        x, scale, px, py = blazeface.letterbox(image)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None])
        interpreter.invoke()
        scores = torch_tensor(interpreter.get_tensor(outs["classificators"])[0, :, 0])
        regress = torch_tensor(interpreter.get_tensor(outs["regressors"])[0])
        reference = blazeface.weighted_nms(*blazeface.decode(scores, regress, det.anchors))
        ours = det([image])[0]
        assert len(ours) == len(reference) >= 1, (len(ours), len(reference))
        for mine, (score, box, kp) in zip(ours, reference):
            ref_box = (box.numpy().reshape(2, 2) * blazeface.INPUT_SIZE - (px, py)) / scale
            assert np.abs(np.asarray(mine.box).reshape(2, 2) - ref_box).max() < 0.5  # pixels
            assert np.abs(mine.keypoints - (kp.numpy() * blazeface.INPUT_SIZE - (px, py)) / scale).max() < 0.5
            assert abs(mine.score - score) < 1e-3
            compared += 1
    assert compared >= len(photos) + 2


def torch_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def test_tight_face_crops_are_faces() -> None:
    """The shared photos are tight crops (a face filling the picture): each gives one person, whose crop
    is the main one, in the one frame."""
    for path in FACE_PHOTOS:
        image = np.asarray(_photo(path))
        found = faces.detect_and_crop(image[None])
        assert found.found and found.crops.shape == (1, faces.CROP_SIZE, faces.CROP_SIZE, 3), path
        assert [t["frames"] for t in found.tracks] == [1] and found.note is None, (path, found.tracks)


def test_two_people_the_one_seen_longest_is_used_and_both_are_named() -> None:
    """16 frames: a person on the left in all of them, a larger person on the right in 10. The left one is
    the main person (seen in most frames), the note names both with their frame counts."""
    left, right = _photo(JOY_FACE), _photo(OTHER_FACE)
    frames = np.stack([
        _scene(640, 360, [(left, 40 + i, 90, 170)] + ([(right, 380 - i, 60, 220)] if i < 10 else [])) for i in range(16)
    ])
    found = faces.detect_and_crop(frames)
    assert [(t["position"], t["frames"], t["main"]) for t in found.tracks] == [("on the left", 16, True), ("on the right", 10, False)]
    assert found.note == ("2 people seen; the answer is about the person on the left, seen in 16/16 frames "
                          "(also seen: the person on the right (10/16))")
    assert all(b is not None and b[0] + b[2] < 320 for b in found.boxes), found.boxes  # every crop is the left face's


def test_equal_frame_counts_the_larger_face_is_the_main_person() -> None:
    small, large = _photo(JOY_FACE), _photo(OTHER_FACE)
    frame = _scene(640, 360, [(small, 60, 100, 150), (large, 360, 60, 230)])
    found = faces.detect_and_crop(frame[None])
    assert [(t["position"], t["main"]) for t in found.tracks] == [("on the right", True), ("on the left", False)]
    assert "about the person on the right, seen in 1/1 frames" in found.note


def test_face_at_the_frame_edge() -> None:
    """A face touching the left edge is a face (its crop repeats the border where it reaches past the frame);
    a face mostly outside the picture is not one."""
    face = _photo(JOY_FACE)
    at_edge = faces.detect_and_crop(_scene(480, 320, [(face, 0, 60, 190)])[None])
    assert at_edge.found and at_edge.boxes[0] is not None
    cut = np.asarray(face)[:, int(0.7 * face.width):]  # 70% of the face outside the frame's left edge
    mostly_out = faces.detect_and_crop(_scene(480, 320, [(Image.fromarray(cut), 0, 60, 60)])[None])
    assert not mostly_out.found and mostly_out.tracks == [] and mostly_out.boxes == [None]


def _write_clip(path: Path, frames: np.ndarray, fps: int = 4) -> Path:
    frames_dir = path.with_suffix("")
    frames_dir.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(frames_dir / f"{i:03d}.png")
    ffmpeg("-framerate", str(fps), "-i", frames_dir / "%03d.png", *H264_ARGS, path)
    return path


def test_clip_with_two_faces_notes_both(extractor, tmp_path: Path) -> None:
    left, right = _photo(JOY_FACE), _photo(OTHER_FACE)
    frames = np.stack([_scene(640, 360, [(left, 40, 90, 170), (right, 390, 90, 150)])] * 8)
    feats = extractor(_write_clip(tmp_path / "two.mp4", frames))
    note = [w for w in feats.warnings if w.startswith("2 people seen")]
    assert note and "the answer is about the person on the left, seen in 16/16 frames" in note[0], feats.warnings
    assert "the person on the right (16/16)" in note[0]
    assert [t["frames"] for t in feats.face_tracks] == [16, 16] and feats.face_tracks[0]["position"] == "on the left"
    assert feats.modalities["visual"]


def test_clip_without_a_face_has_no_visual_modality(extractor, tmp_path: Path) -> None:
    """A room without anyone in it: the visual models are not asked (no whole-frame guess), and the result says so."""
    yy, xx = np.mgrid[0:240, 0:320]
    room = np.stack([(xx * 0.6 + 40), (yy * 0.5 + 60), np.full_like(xx, 120.0)], -1).astype(np.uint8)
    frames = np.stack([np.roll(room, 5 * i, axis=1) for i in range(8)])
    feats = extractor(_write_clip(tmp_path / "room.mp4", frames))
    assert feats.modalities["visual"] is False and feats.visual_features is None and feats.visual_logits is None
    assert feats.face_crops is None and feats.faces_found == 0 and feats.face_tracks == []
    assert "no face found: visual models skipped" in feats.warnings


def test_exif_rotated_portrait_is_found_upright(extractor, tmp_path: Path) -> None:
    """A phone portrait stored sideways with EXIF Orientation 6: decoded upright, the face is found with its
    eyes above its mouth, and the crop fed to the models is that face."""
    upright = Image.fromarray(_scene(240, 320, [(_photo(JOY_FACE), 50, 80, 140)]))
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    path = tmp_path / "portrait.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=92)
    feats = extractor(path)
    assert feats.frames.shape[1:3] == (320, 240) and feats.faces_found == 1 and feats.modalities["visual"]
    dets = faces.detect(feats.frames)[0]
    eyes_y, mouth_y = dets[0].keypoints[:2, 1].mean(), dets[0].keypoints[3, 1]
    assert eyes_y < mouth_y, dets[0].keypoints
    x, y, w, h = feats.face_boxes[0]
    assert 40 <= x and x + w <= 200 and 60 <= y <= 180, feats.face_boxes[0]


def test_dark_face_is_equalised_and_a_too_dark_one_is_not_used(extractor, tmp_path: Path) -> None:
    """A face at 30% light is found and reaches the FER encoder with its contrast restored by CLAHE; a face
    at 4% light (mostly noise) is noted as too dark and the visual models are skipped."""
    from models.backbones.fer_xception import preprocess

    # the margin depends on the photo's detail: Hopper's 220-px crop clears it as the corpus's Aaron_Sorkin_0002 did
    lit = _scene(320, 320, [(_photo(OTHER_FACE), 70, 60, 180)]).astype(np.float32)
    dim = (lit * 0.3).astype(np.uint8)
    found = faces.detect_and_crop(dim[None])
    assert found.found
    plain, equalised = preprocess(found.crops), preprocess(found.crops, equalise=True)
    reference = preprocess(faces.detect_and_crop(lit.astype(np.uint8)[None]).crops)
    assert float(plain.std()) < 0.5 * float(reference.std()) < float(equalised.std()), (plain.std(), reference.std(), equalised.std())

    dark = np.clip(lit * 0.04 + np.random.default_rng(18).normal(0, 3, lit.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "dark.png"
    Image.fromarray(dark).save(path)
    feats = extractor(path)
    assert not feats.modalities["visual"]
    assert any("too dark to trust" in w for w in feats.warnings), feats.warnings


def test_small_face_in_a_wide_frame_is_found_on_tiles() -> None:
    """A face 9% of a 640x360 frame's width (someone across the room) is too small for the whole-frame pass;
    the tiled retry finds it once, where it is."""
    frame = _scene(640, 360, [(_photo(JOY_FACE), 300, 150, 58)])
    assert faces.detector()([frame]) == [[]]  # the whole-frame pass alone misses it
    found = faces.detect_and_crop(np.stack([frame] * 4))
    assert [t["frames"] for t in found.tracks] == [4], found.tracks
    x, y, w, h = found.boxes[0]
    assert 290 <= x and x + w <= 370 and 140 <= y and y + h <= 220, found.boxes[0]


def test_bench_faces_counts_recall_of_both_detectors(monkeypatch, tmp_path: Path, capsys) -> None:
    """`bench faces` on a 3-row validation manifest (2 face photos, 1 empty room) run against the same images:
    recall counts photos with a box, both detectors timed."""
    import json

    import emoweb.config
    from emoweb.cli import main
    from emoweb.cli.bench import FACES_MANIFEST

    folder = (tmp_path / FACES_MANIFEST).parent
    folder.mkdir(parents=True)
    rows = ["path,label7,split"]
    for i, path in enumerate(FACE_PHOTOS):
        _photo(path).save(folder / f"face{i}.png")
        rows.append(f"face{i}.png,joy,val")
    Image.new("RGB", (200, 200), GREY).save(folder / "room.png")
    rows += ["room.png,neutral,val", "face0.png,joy,train"]  # a train row is not counted
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(emoweb.config, "SHARED_DATA", tmp_path)
    assert main(["bench", "faces", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 and out["detectors"]["blazeface"]["found"] == 2
    assert out["detectors"]["blazeface"]["recall"] == pytest.approx(2 / 3)
    assert 0 <= out["detectors"]["haar"]["found"] <= 2 and out["detectors"]["haar"]["ms_mean"] > 0
    assert out["haar_only"] + out["detectors"]["blazeface"]["found"] - out["blazeface_only"] == out["detectors"]["haar"]["found"]
