"""Calibrated universality scores: (score - random) / (1 - random) and a Student-t interval over seeds, checked
against hand computations; the study's calibrated columns and per-group summary."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from interp_core.errors import InputError
from interp_core.universality import CalibratedScore, Comparison, calibrate, calibrated_score, universality_study


def test_calibrated_score_by_hand():
    # CartPole-like row: random-init CKA 0.75, trained 0.90 -> closes (0.90 - 0.75) / 0.25 = 0.6 of the gap
    assert calibrated_score(0.90, 0.75) == pytest.approx(0.6)
    # vision-like row: random-init 0.30, trained 0.72 -> 0.42 / 0.70 = 0.6: the same calibrated value
    assert calibrated_score(0.72, 0.30) == pytest.approx(0.6)
    assert calibrated_score(0.75, 0.75) == 0.0
    assert calibrated_score(1.0, 0.2) == pytest.approx(1.0)
    assert calibrated_score(0.1, 0.2) == pytest.approx(-0.125)  # below the baseline: negative
    np.testing.assert_allclose(calibrated_score([0.9, 0.8], [0.5, 0.6]), [0.8, 0.5])
    assert calibrated_score(80.0, 50.0, ceiling=100.0) == pytest.approx(0.6)  # e.g. accuracy in percent


def test_calibrate_t_interval_by_hand():
    scores, baselines = [0.90, 0.85, 0.95], [0.75, 0.70, 0.80]
    cal = calibrate(scores, baselines, confidence=0.95, name="cartpole cka")
    # per seed: 0.15/0.25 = 0.6, 0.15/0.30 = 0.5, 0.15/0.20 = 0.75
    values = [0.6, 0.5, 0.75]
    np.testing.assert_allclose(cal.values, values)
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    t975_df2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
    half = t975_df2 * sd / math.sqrt(3)
    assert cal.mean == pytest.approx(mean)
    assert cal.low == pytest.approx(mean - half)
    assert cal.high == pytest.approx(mean + half)
    assert cal.n == 3 and cal.method == "student-t"
    row = cal.row()
    assert row["score"] == pytest.approx(0.9) and row["baseline"] == pytest.approx(0.75)
    assert cal.to_dict()["values"] == pytest.approx(values)
    # one shared baseline broadcasts; 90% is narrower than 95%
    one = calibrate([0.8, 0.9], 0.5, confidence=0.9)
    np.testing.assert_allclose(one.values, [0.6, 0.8])
    t95_df1 = 6.313751514675043
    assert one.high - one.mean == pytest.approx(t95_df1 * np.std([0.6, 0.8], ddof=1) / math.sqrt(2))
    assert isinstance(one, CalibratedScore)


def test_calibrate_refuses_bad_input():
    with pytest.raises(InputError, match="at least 2 seeds"):
        calibrate([0.9], [0.7])
    with pytest.raises(InputError, match="baselines: one per seed"):
        calibrate([0.9, 0.8, 0.7], [0.7, 0.6])
    with pytest.raises(InputError, match="confidence"):
        calibrate([0.9, 0.8], [0.7, 0.6], confidence=95)
    with pytest.raises(InputError, match="no gap"):
        calibrated_score(0.9, 1.0)
    with pytest.raises(InputError, match="finite"):
        calibrated_score(float("nan"), 0.5)


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)).eval()


def test_study_calibrated_columns_and_group_summary():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    comps = [Comparison(f"toy@{s}", _mlp(s), _mlp(s + 10), x, ["1", "3"], ["1", "3"], baseline=_mlp(s + 20),
                        group="toy") for s in range(3)]
    res = universality_study(comps, progress=False)
    for row in res.table:
        assert row["group"] == "toy"
        for score in ("cka_depth", "cka_best", "matched_corr"):
            expected = (row[score] - row[f"{score}_baseline"]) / (1 - row[f"{score}_baseline"])
            assert row[f"{score}_calibrated"] == pytest.approx(expected)
    (summary,) = res.summary()
    assert summary["n_seeds"] == 3
    vals = [r["cka_depth_calibrated"] for r in res.table]
    ref = calibrate([r["cka_depth"] for r in res.table], [r["cka_depth_baseline"] for r in res.table])
    assert summary["cka_depth_calibrated"] == pytest.approx(np.mean(vals))
    assert summary["cka_depth_calibrated_low"] == pytest.approx(ref.low)
    assert summary["cka_depth_calibrated_high"] == pytest.approx(ref.high)
    single = universality_study(comps[:1], progress=False)
    with pytest.raises(InputError, match="at least 2 seeds"):
        single.summary()
