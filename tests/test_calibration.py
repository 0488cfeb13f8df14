"""Honest confidence: temperature scaling, ECE, the "not sure" threshold, and the card's temperature
applied by every loaded model (issue 21 item 6)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emoweb.learning.metrics import ece_floor, expected_calibration_error, selective_threshold
from models import LABEL7, registry
from models.backbones import PROFILES
from models.calibration import calibrated_logits, fit_spread_temperature, fit_temperature
from models.inputs import ModelInput


def test_ece_by_hand() -> None:
    # two bins: conf 0.9 right 1/2 (gap 0.4), conf 0.6 right 1/1 (gap 0.4) -> weighted 0.4
    assert abs(expected_calibration_error([0.9, 0.9, 0.6], [True, False, True], bins=10) - 0.4) < 1e-9
    assert expected_calibration_error([0.75, 0.75, 0.75, 0.75], [True, True, True, False]) == 0.0
    assert expected_calibration_error([], []) is None


def test_ece_floor_is_the_sampling_bias_of_a_calibrated_model() -> None:
    """All rows at confidence 0.5 fall in one bin, so a calibrated model's ECE is |0.5 - its hit rate|, whose
    mean over draws is 0.5 * sqrt(2 / (pi n)) (the half-normal); at confidence 1 it is exactly 0. A model
    right 60 % of the time at a stated 90 % lies far above the floor's 95th percentile."""
    for n in (100, 400):
        floor = ece_floor([0.5] * n, draws=2000)
        expected = 0.5 * math.sqrt(2 / (math.pi * n))
        assert abs(floor["mean"] - expected) < 0.12 * expected and floor["p95"] > floor["mean"]
    assert ece_floor([1.0] * 50) == {"mean": 0.0, "p95": 0.0}
    assert ece_floor([]) is None
    overconfident = expected_calibration_error([0.9] * 240, [True] * 144 + [False] * 96)
    assert overconfident == pytest.approx(0.3) and overconfident > ece_floor([0.9] * 240)["p95"]


def test_selective_threshold_by_hand() -> None:
    conf = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    right = [True, True, True, False, True, False]
    # top 3 all right; top 5 = 4/5 = 0.8 -> the lowest threshold reaching 80% is 0.6, keeping 5 of 6
    assert selective_threshold(conf, right, 0.8) == (0.6, 5 / 6)
    assert selective_threshold(conf, right, 1.0) == (0.8, 0.5)
    assert selective_threshold([0.9], [False], 0.8) == (1.0, 0.0)


def test_fitted_temperature_makes_an_overconfident_model_honest() -> None:
    """Logits whose true calibration temperature is 3: the fit finds ~3 and ECE falls below 0.03."""
    gen = torch.Generator().manual_seed(0)
    n, c = 6000, 7
    honest = torch.randn(n, c, generator=gen) * 1.5
    targets = torch.multinomial(honest.softmax(-1), 1, generator=gen).squeeze(1)  # labels drawn from the honest probs
    overconfident = honest * 3.0
    t = fit_temperature(overconfident, targets)
    assert 2.6 < t < 3.4, t

    def ece(logits):
        p = logits.softmax(-1)
        return expected_calibration_error(p.max(-1).values.tolist(), (p.argmax(-1) == targets).tolist())

    assert ece(overconfident) > 0.15
    assert ece(overconfident / t) < 0.03


def test_spread_temperature_fits_two_corpora_whose_logits_differ_in_scale() -> None:
    """Two corpora on which the model is right equally often, one with logits 3x as large (EmoAsst's voice on
    RAVDESS vs CREMA-D): one temperature leaves one corpus over- and the other under-confident; a temperature
    growing with the row's spread (power ~1) makes both honest."""
    gen = torch.Generator().manual_seed(0)
    n, c = 4000, 7
    honest = torch.randn(2 * n, c, generator=gen) * 1.5
    targets = torch.multinomial(honest.softmax(-1), 1, generator=gen).squeeze(1)
    scale = torch.cat([torch.full((n, 1), 2.0), torch.full((n, 1), 6.0)])
    logits = honest * scale
    corpus = [slice(0, n), slice(n, 2 * n)]

    def ece(scores, rows):
        p = scores[rows].softmax(-1)
        return expected_calibration_error(p.max(-1).values.tolist(), (p.argmax(-1) == targets[rows]).tolist())

    t = fit_temperature(logits, targets)
    assert max(ece(logits / t, rows) for rows in corpus) > 0.15
    temp, power = fit_spread_temperature(logits, targets)
    assert 0.7 < power < 1.3, power
    calibrated = calibrated_logits(logits, {}, ["audio"] * len(logits), {"temperature": {"audio": temp}, "spread_power": {"audio": power}})
    assert max(ece(calibrated, rows) for rows in corpus) < 0.05  # one temperature: 0.20 and 0.09
    assert torch.equal(calibrated.argmax(-1), logits.argmax(-1))  # the same answers
    assert fit_spread_temperature(logits[:60], targets[:60])[1] == 0.0  # too few rows to tell: plain temperature
    # power 0 is plain temperature scaling
    assert torch.allclose(calibrated_logits(logits, {}, ["audio"] * len(logits), {"temperature": {"audio": t}, "spread_power": {"audio": 0.0}}),
                          logits / t)


@pytest.mark.parametrize("fitted", [2.5, {"audio": 2.5, "visual": 9.0}])
def test_loaded_model_applies_the_cards_temperature(tmp_path, fitted) -> None:
    """The card's temperature (one, or one per input kind: these rows are voice only) divides the logits."""
    torch.manual_seed(0)
    dims = PROFILES["embedded"].dims
    model = registry.build("foalnet", dims)
    registry.save(model, "foalnet", "embedded", {"labels": list(LABEL7)}, tmp_path)
    plain, _ = registry.load("foalnet", "embedded", tmp_path)
    card_path = tmp_path / "embedded" / "foalnet.json"
    card = json.loads(card_path.read_text())
    card["calibration"] = {"temperature": fitted}
    card_path.write_text(json.dumps(card))
    calibrated, _ = registry.load("foalnet", "embedded", tmp_path)
    b, t = 3, 12
    x = ModelInput(
        audio=torch.randn(b, t, dims["audio"]), audio_mask=torch.ones(b, t, dtype=torch.bool),
        visual=torch.zeros(b, 1, dims["visual"]), visual_mask=torch.zeros(b, 1, dtype=torch.bool),
        text=torch.zeros(b, dims["text"]), text_tokens=torch.zeros(b, 1, dims["text_tokens"]),
        text_mask=torch.zeros(b, 1, dtype=torch.bool),
        present={"audio": torch.ones(b, dtype=torch.bool), "visual": torch.zeros(b, dtype=torch.bool), "text": torch.zeros(b, dtype=torch.bool)},
    )
    with torch.no_grad():
        a, c = plain(x), calibrated(x)
    assert torch.allclose(c.logits, a.logits / 2.5, atol=1e-5)
    assert torch.allclose(c.probs, (a.logits / 2.5).softmax(-1), atol=1e-5)
    assert torch.equal(a.probs.argmax(-1), c.probs.argmax(-1))  # same answers, humbler confidence
    assert np.all(c.probs.max(-1).values.numpy() <= a.probs.max(-1).values.numpy() + 1e-6)


class _Batch:
    """What the calibration hook reads from a model's input: which senses each row has."""

    def __init__(self, present: dict[str, list[bool]]):
        self.present = {m: torch.tensor(v) for m, v in present.items()}


def test_each_input_kind_gets_its_own_temperature() -> None:
    """Voice-only rows divided by the voice's temperature, face-only rows by the face's; a kind without
    one (here text) is left as it is; a kind with more senses than any fitted one is served by the
    fitted kind with the most of its senses (an app clip with a transcript by "audio+visual")."""
    from models.calibration import calibration_hook, input_kind
    from models.output import ModelOutput

    assert input_kind({"audio": True, "visual": True, "text": False}) == "audio+visual"
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    x = _Batch({"audio": [True, False, False, True], "visual": [False, True, False, True], "text": [False, False, True, True]})
    out = ModelOutput(probs=logits.softmax(-1), labels=["a", "b"], embedding=torch.zeros(4, 2), logits=logits.clone())
    calibration_hook({"temperature": {"audio": 2.0, "visual": 4.0, "audio+visual": 8.0}})(None, (x, None), out)
    assert torch.allclose(out.logits[:, 0], torch.tensor([1.0, 0.5, 2.0, 0.25]))
    assert torch.allclose(out.probs, out.logits.softmax(-1)) and torch.equal(out.raw_logits, logits)


def test_fusion_weights_add_each_senses_decision() -> None:
    """A row with face and voice gets w_fused * fused logits + w_audio * log p_audio + w_visual * log p_visual;
    single-sense rows keep their temperature."""
    from models.calibration import calibration_hook
    from models.output import ModelOutput

    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p_audio, p_visual = torch.tensor([[0.2, 0.8], [0.5, 0.5]]), torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    x = _Batch({"audio": [True, True], "visual": [True, False], "text": [False, False]})
    out = ModelOutput(probs=logits.softmax(-1), labels=["a", "b"], embedding=torch.zeros(2, 2), logits=logits.clone(),
                      modality_probs={"audio": p_audio, "visual": p_visual})
    calibration = {"temperature": {"audio": 2.0, "audio+visual": 1.0}, "fusion": {"audio+visual": {"fused": 0.5, "audio": 2.0, "visual": 1.0}}}
    calibration_hook(calibration)(None, (x, None), out)
    expected = 0.5 * logits[0] + 2.0 * p_audio[0].log() + 1.0 * p_visual[0].log()
    assert torch.allclose(out.logits[0], expected)
    assert torch.allclose(out.logits[1], logits[1] / 2.0)
    assert int(out.probs[0].argmax()) == 1  # the voice's 0.8 outweighs the fused head and the face


def test_fit_fusion_trusts_the_informative_sense() -> None:
    """Two senses with independent evidence: the fitted weights beat the fused head alone and each sense
    alone (NLL and accuracy), and a sense that is pure noise gets (near) no weight."""
    from models.calibration import fit_fusion

    g = torch.Generator().manual_seed(0)
    n, c = 3000, 4
    targets = torch.randint(0, c, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(targets, c).float()

    def sense(strength: float) -> torch.Tensor:
        return (strength * onehot + torch.randn(n, c, generator=g)).log_softmax(-1)

    voice, face, noise = sense(1.5), sense(1.0), sense(0.0)
    fused_head = 2.0 * voice  # a fused head that reads the voice only (over-confident)
    w = fit_fusion(fused_head, {"audio": voice, "visual": face, "text": noise}, targets)
    combined = w["fused"] * fused_head + w["audio"] * voice + w["visual"] * face + w["text"] * noise
    nll = torch.nn.functional.cross_entropy
    assert nll(combined, targets) < min(nll(fused_head / t, targets) for t in (1.0, 2.0, 4.0))
    acc = lambda z: float((z.argmax(-1) == targets).float().mean())  # noqa: E731
    assert acc(combined) > max(acc(voice), acc(face)) + 0.03
    assert w["visual"] > 0.5 and w["text"] < 0.1


def test_train_then_calibrate_rewrites_the_cards_calibration(tmp_path, monkeypatch, capsys) -> None:
    """`train` writes a calibration fitted on its dev rows; `calibrate` fits it again from the card alone
    (the same rows rebuilt) and rewrites only that part of the card."""
    import csv

    from conftest import FACES, VOICES
    from emoweb import cli

    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    manifest = tmp_path / "tiny.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "speaker"])
        for i, (label, path) in enumerate([*VOICES.items(), *FACES.items()] * 3):
            w.writerow([path, label, f"person{i}"])  # 18 people; by hash, people 0, 7, 15, 17 form the dev rows (3 voices, 1 face)
    out = tmp_path / "ck"
    assert cli.main(["train", "foalnet", "--data", str(manifest), "--epochs", "1", "--epoch-rows", "8", "--dev-fraction", "0.5",
                     "--built-clips", "own", "--out", str(out)]) == 0
    card_path = out / "embedded" / "foalnet.json"
    card = json.loads(card_path.read_text())
    # a recipe option off its default is in the card's command, so the command retrains the same recipe
    assert card["command"].endswith(" --built-clips own") and card["training"]["built_clips"] == "own"
    fitted = card["calibration"]
    assert set(fitted["temperature"]) == {"audio", "visual"}
    assert all(0.045 <= t <= 22.1 for t in fitted["temperature"].values())  # the search range (0.05-20, refined by 10%)
    card["calibration"] = {"temperature": {"audio": 7.0}}
    card_path.write_text(json.dumps(card))
    capsys.readouterr()
    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(out))  # where the app reads: calibrate's default root
    assert cli.main(["calibrate", "foalnet"]) == 0
    again = json.loads(card_path.read_text())
    # the same dev rows, the same fit (the saved weights are float16, so the logits differ in the 3rd digit)
    assert again["calibration"]["temperature"] == pytest.approx(fitted["temperature"], rel=0.02)
    assert {k: v for k, v in again.items() if k != "calibration"} == {k: v for k, v in card.items() if k != "calibration"}
    assert json.loads(capsys.readouterr().out) == again["calibration"]


def test_calibration_rows_keep_each_corpus_label_mix(tmp_path, monkeypatch) -> None:
    """Early stopping scores at most DEV_ROWS_PER_GROUP dev rows per (corpus, label); the calibration reads
    every dev row, so a corpus that is mostly neutral is calibrated as mostly neutral (a temperature fitted
    on a label-balanced subset fits a mix no one brings)."""
    from collections import Counter

    from emoweb.cli.model_commands import _training_samples
    from emoweb.config import DEV_ROWS_PER_GROUP, Settings

    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    manifest = tmp_path / "said.csv"
    said = [("neutral", f"The bus leaves at {i} past nine.") for i in range(DEV_ROWS_PER_GROUP + 15)]
    said += [("joy", f"Hooray, we won {i} games in a row!") for i in range(5)]
    manifest.write_text("path,label,text,speaker\n" + "".join(f",{label},{text},person{i}\n" for i, (label, text) in enumerate(said)))
    _, _, samples, _, calibration = _training_samples(Settings(), "sem_mbt", str(manifest), seed=0, dev_fraction=1.0)
    dev = Counter(s.row.label for s in samples if s.split == "dev")
    assert dev == {"neutral": DEV_ROWS_PER_GROUP, "joy": 5}  # what early stopping scores
    assert Counter(s.row.label for s in calibration) == {"neutral": DEV_ROWS_PER_GROUP + 15, "joy": 5}
