"""The torch Whisper encoder against CTranslate2's own encoder, on the shipped weights and a real clip.

The reader is also checked on a hand-written model.bin, so a format slip shows as a parse error
rather than as a quietly different encoder.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch

from emoweb.pipeline.media import decode
from models.backbones.whisper import JOINED_SIZE, joined_model_dir
from models.backbones.whisper_encoder import WhisperEncoder, read_ct2_variables


def _string(s: str) -> bytes:
    return struct.pack("H", len(s) + 1) + s.encode() + b"\0"


def _variable(name: str, array: np.ndarray, type_id: int) -> bytes:
    head = _string(name) + struct.pack("B", array.ndim) + b"".join(struct.pack("I", d) for d in array.shape)
    return head + struct.pack("B", type_id) + struct.pack("I", array.nbytes) + array.tobytes()


def test_reader_on_a_hand_written_file(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    heads = np.array(8, dtype=np.int16)
    other = np.ones(4, dtype=np.float32)
    body = struct.pack("I", 6) + _string("WhisperSpec") + struct.pack("I", 3) + struct.pack("I", 3)
    body += _variable("encoder/w", w, 4) + _variable("encoder/num_heads", heads, 2) + _variable("decoder/x", other, 0)
    body += struct.pack("I", 0)
    path = tmp_path / "model.bin"
    path.write_bytes(body)
    got = read_ct2_variables(path, "encoder/")
    assert sorted(got) == ["num_heads", "w"]
    np.testing.assert_array_equal(got["w"], w)
    assert int(got["num_heads"]) == 8
    path.write_bytes(struct.pack("I", 5) + body[4:])
    with pytest.raises(ValueError, match="binary version 5"):
        read_ct2_variables(path)


@pytest.fixture(scope="module")
def mel(happy_speech: Path) -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    features = FeatureExtractor(80)(decode(happy_speech).audio)[:, :-1]
    return np.pad(features, ((0, 0), (0, 3000 - features.shape[1])))[None].astype(np.float32)


def test_matches_ctranslate2_float32(mel: np.ndarray) -> None:
    """Same weights, same maths: the torch pass reproduces CTranslate2's float32 encoder."""
    model_dir = joined_model_dir()
    encoder = WhisperEncoder.from_ct2(model_dir / "model.bin")
    assert (encoder.config.layers, encoder.config.heads, encoder.config.width) == (6, 8, 512)
    last, states = encoder(torch.from_numpy(mel))
    reference = ctranslate2.models.Whisper(str(model_dir), compute_type="float32", intra_threads=1)
    expected = torch.from_numpy(np.array(reference.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True)))
    assert last.shape == expected.shape == (1, 1500, 512)
    assert (last - expected).abs().max() < 1e-2
    assert len(states) == 6 and all(s.shape == (1, 1500, 512) for s in states)
    assert not torch.allclose(states[3], states[5])


def test_two_processes_join_the_weights_once(tmp_path: Path) -> None:
    """`encode --shard 1/2` and `2/2` started together: before the lock, the second to finish replaced the
    first's joined directory while the first opened it ("Unable to open file 'model.bin'"). Both must get
    the same complete file, joined once."""
    go = tmp_path / "go"  # both start joining within milliseconds of each other, after their imports
    code = ("import os, time, ctranslate2; from models.backbones.whisper import joined_model_dir\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
            "d = joined_model_dir(); inode = (d / 'model.bin').stat().st_ino\n"
            "ctranslate2.models.Whisper(str(d), compute_type='int8'); print(d, inode)")
    env = {**os.environ, "EMOWEB_MODEL_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    time.sleep(20)  # the imports
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # the same directory and the same file: joined once
    assert (tmp_path / "cache" / "whisper-base-ct2" / "model.bin").stat().st_size == JOINED_SIZE
    assert not list((tmp_path / "cache").glob(".whisper-join-*"))  # no temp directory left behind
