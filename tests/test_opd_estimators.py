"""OPD estimators (warmstart.losses.OPD_ESTIMATORS), checked against numbers computed by hand.

Every case is a tiny distribution written as probabilities; the expected values and
gradients are worked out in the comments (natural logs). The student's log-probs are a
log_softmax of logits, so gradients are checked with respect to the student's logits.
Also here: OPDConfig's estimator fields and their errors, and a study TOML arm that
selects an estimator.
"""

from __future__ import annotations

import math
import tomllib

import pytest
import torch

from warmstart import losses as L
from warmstart.config import ConfigError, from_dict
from warmstart.stages.opd import OPDConfig

LN2, LN3 = math.log(2.0), math.log(3.0)


def _logits(*probs: list[float]) -> torch.Tensor:
    """1 x T x V logits (log p: a log_softmax of them gives p back), requiring grad."""
    return torch.tensor([[[math.log(p) for p in row] for row in probs]], dtype=torch.float64).requires_grad_()


def _logq(*probs: list[float]) -> torch.Tensor:
    return torch.tensor([[[math.log(p) for p in row] for row in probs]], dtype=torch.float64)


# ---- the mixture of teachers -----------------------------------------------------------------


def test_mixture_logp_by_hand():
    # token log-probs of two teachers at one token: p = 0.5 and 0.25
    # mixture: (0.5 + 0.25) / 2 = 0.375 -> log 0.375 = -0.980829
    logp_MBT = torch.log(torch.tensor([[[0.5]], [[0.25]]], dtype=torch.float64))
    assert float(L.mixture_logp(logp_MBT)[0, 0]) == pytest.approx(math.log(0.375), abs=1e-12)
    # full distributions, entry by entry: [0.5, 0.5] and [0.9, 0.1] -> [0.7, 0.3] (still sums to 1)
    logq_MBTV = torch.log(torch.tensor([[[[0.5, 0.5]]], [[[0.9, 0.1]]]], dtype=torch.float64))
    mix = L.mixture_logp(logq_MBTV).exp()[0, 0]
    assert mix.tolist() == pytest.approx([0.7, 0.3], abs=1e-12)
    # one teacher: unchanged, bit for bit
    one = torch.randn(1, 2, 3, 4)
    assert torch.equal(L.mixture_logp(one), one[0])
    with pytest.raises(ValueError, match="at least one teacher"):
        L.mixture_logp(torch.zeros(0, 2))


# ---- sampled_rkl: today's estimator, as an advantage --------------------------------------------


def test_sampled_rkl_is_the_reverse_kl_advantage_by_hand():
    assert L.get("opd_estimators", "sampled_rkl") is L.reverse_kl_advantage
    # adv = -(log p_s - log p_t): -(-1.0 - -1.5) = -0.5; -(-2.0 - -1.0) = 1.0; padding -> 0
    s = torch.tensor([[-1.0, -2.0, -3.0]])
    t = torch.tensor([[-1.5, -1.0, float("nan")]])
    adv = L.OPD_ESTIMATORS["sampled_rkl"](s, t, torch.tensor([[True, True, False]]))
    assert adv.tolist() == [[-0.5, 1.0, 0.0]]


# ---- full_rkl ------------------------------------------------------------------------------------


def test_full_reverse_kl_value_and_gradient_by_hand():
    # p_s = [0.5, 0.5], p_t = [0.25, 0.75]
    # KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) = 0.143841
    # d = ln p_s - ln p_t = [ln 2, ln(2/3)] = [0.693147, -0.405465]
    # dKL/dz_v = p_s(v) (d(v) - KL) = [0.5 (0.693147 - 0.143841), 0.5 (-0.405465 - 0.143841)]
    #          = [0.274653, -0.274653]
    z = _logits([0.5, 0.5])
    kl = L.full_reverse_kl(torch.log_softmax(z, -1), _logq([0.25, 0.75]), torch.tensor([[True]]))
    assert float(kl[0, 0]) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    (g,) = torch.autograd.grad(kl.sum(), z)
    assert g[0, 0].tolist() == pytest.approx([0.274653, -0.274653], abs=1e-6)


def test_full_reverse_kl_masks_padding_even_when_it_is_nan():
    # position 0: the case above (0.143841); position 1 is padding holding NaN: value 0, and the
    # gradient w.r.t. the student's log-probs is 0 there (d KL / d log p_s(v) = p_s(v) d(v) = 0.5 ln 2,
    # 0.5 ln(2/3) = [0.346574, -0.202733] at position 0)
    s = torch.tensor([[[math.log(0.5), math.log(0.5)], [float("nan"), 0.0]]], dtype=torch.float64)
    s.requires_grad_()
    t = torch.tensor([[[math.log(0.25), math.log(0.75)], [float("nan"), float("nan")]]], dtype=torch.float64)
    kl = L.full_reverse_kl(s, t, torch.tensor([[True, False]]))
    assert kl[0].tolist() == pytest.approx([0.5 * math.log(4 / 3), 0.0], abs=1e-12)
    (g,) = torch.autograd.grad(kl.sum(), s)
    assert g.flatten().tolist() == pytest.approx([0.5 * LN2, 0.5 * math.log(2 / 3), 0.0, 0.0], abs=1e-12)


# ---- topk_fkl ------------------------------------------------------------------------------------


def test_topk_forward_kl_by_hand():
    # p_t = [0.6, 0.3, 0.1], p_s = [0.2, 0.5, 0.3]
    s, t, m = _logits([0.2, 0.5, 0.3]), _logq([0.6, 0.3, 0.1]), torch.tensor([[True]])
    # k = 1: S = {0} (the teacher's top token); rest r_t = 0.4, r_s = 0.8
    #   0.6 ln(0.6/0.2) + 0.4 ln(0.4/0.8) = 0.6 ln 3 - 0.4 ln 2 = 0.659167 - 0.277259 = 0.381908
    kl1 = L.topk_forward_kl(torch.log_softmax(s, -1), t, m, 1)
    assert float(kl1) == pytest.approx(0.6 * LN3 - 0.4 * LN2, abs=1e-12)
    # gradient: bins {0} and {1, 2}: P_s - P_t = [0.2 - 0.6, 0.8 - 0.4] = [-0.4, 0.4]; within the
    # rest bin it splits as p_s: 0.4 * 0.5/0.8 = 0.25, 0.4 * 0.3/0.8 = 0.15  ->  [-0.4, 0.25, 0.15]
    (g,) = torch.autograd.grad(kl1.sum(), s)
    assert g[0, 0].tolist() == pytest.approx([-0.4, 0.25, 0.15], abs=1e-9)
    # k = 2: S = {0, 1}, rest = {2} alone, so this is the full forward KL:
    #   0.6 ln 3 + 0.3 ln(0.3/0.5) + 0.1 ln(0.1/0.3) = 0.659167 - 0.153248 - 0.109861 = 0.396058
    full = 0.6 * LN3 + 0.3 * math.log(0.6) + 0.1 * math.log(1 / 3)
    kl2 = L.topk_forward_kl(torch.log_softmax(s, -1), t, m, 2)
    assert float(kl2) == pytest.approx(full, abs=1e-12)
    # and its gradient is p_s - p_t = [-0.4, 0.2, 0.2]
    (g,) = torch.autograd.grad(kl2.sum(), s)
    assert g[0, 0].tolist() == pytest.approx([-0.4, 0.2, 0.2], abs=1e-9)
    # k >= V: the full forward KL too (k is clamped to V; the rest is empty)
    assert float(L.topk_forward_kl(torch.log_softmax(s, -1), t, m, 5)) == pytest.approx(full, abs=1e-12)
    # the rest bin matters: the bare partial sum at k = 1 would be 0.6 ln 3 = 0.659167
    assert float(kl1) != pytest.approx(0.6 * LN3, abs=1e-3)


def test_topk_forward_kl_uses_the_teachers_top_k_and_masks():
    # p_t = [0.1, 0.3, 0.6] (top-1: entry 2), p_s = [0.3, 0.5, 0.2]; position 1 padding (NaN)
    # k = 1: 0.6 ln(0.6/0.2) + 0.4 ln(0.4/0.8) = 0.381908 (the first case, entries reordered)
    s = torch.tensor([[[0.3, 0.5, 0.2], [float("nan")] * 3]], dtype=torch.float64).log().requires_grad_()
    t = torch.tensor([[[0.1, 0.3, 0.6], [float("nan")] * 3]], dtype=torch.float64).log()
    kl = L.topk_forward_kl(s, t, torch.tensor([[True, False]]), 1)
    assert kl[0].tolist() == pytest.approx([0.6 * LN3 - 0.4 * LN2, 0.0], abs=1e-12)
    (g,) = torch.autograd.grad(kl.sum(), s)
    assert torch.isfinite(g).all() and g[0, 1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="k >= 1"):
        L.topk_forward_kl(s, t, torch.tensor([[True, False]]), 0)


# ---- topk_rkl ------------------------------------------------------------------------------------


def test_topk_reverse_kl_by_hand():
    # p_s = [0.5, 0.3, 0.2], p_t = [0.25, 0.25, 0.5]
    z, t, m = _logits([0.5, 0.3, 0.2]), _logq([0.25, 0.25, 0.5]), torch.tensor([[True]])
    # k = 1: S = {0}, the STUDENT's top token (the teacher's would be entry 2); r_s = 0.5, r_t = 0.75
    #   0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3) = 0.143841
    # (with the teacher's top-1, {2}, it would be 0.2 ln(0.2/0.5) + 0.8 ln(0.8/0.5) = 0.192745)
    kl1 = L.topk_reverse_kl(torch.log_softmax(z, -1), t, m, 1)
    assert float(kl1) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    # gradient: p_s(v) (d(bin of v) - KL), d = [ln 2, ln(2/3)] for bins {0}, {1, 2}:
    #   v0: 0.5 (0.693147 - 0.143841) = 0.274653
    #   v1: 0.3 (-0.405465 - 0.143841) = -0.164792;  v2: 0.2 (-0.549306) = -0.109861
    (g,) = torch.autograd.grad(kl1.sum(), z)
    assert g[0, 0].tolist() == pytest.approx([0.274653, -0.164792, -0.109861], abs=1e-6)
    # k = 2: S = {0, 1}, rest {2}: the full reverse KL
    #   0.5 ln 2 + 0.3 ln(0.3/0.25) + 0.2 ln(0.2/0.5) = 0.346574 + 0.054697 - 0.183258 = 0.218013
    full = 0.5 * LN2 + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    kl2 = L.topk_reverse_kl(torch.log_softmax(z, -1), t, m, 2)
    assert float(kl2) == pytest.approx(full, abs=1e-12)
    assert float(L.full_reverse_kl(torch.log_softmax(z, -1), t, m)) == pytest.approx(full, abs=1e-12)
    # padding (NaN) is 0 and gives no NaN gradient
    zp = torch.tensor([[[0.5, 0.3, 0.2], [float("nan")] * 3]], dtype=torch.float64).log().requires_grad_()
    tp = torch.tensor([[[0.25, 0.25, 0.5], [float("nan")] * 3]], dtype=torch.float64).log()
    kl = L.topk_reverse_kl(zp, tp, torch.tensor([[True, False]]), 1)
    assert kl[0].tolist() == pytest.approx([0.5 * math.log(4 / 3), 0.0], abs=1e-12)
    (g,) = torch.autograd.grad(kl.sum(), zp)
    assert torch.isfinite(g).all() and g[0, 1].tolist() == [0.0, 0.0, 0.0]


# ---- every dense estimator: an identical teacher gives exactly zero ---------------------------


@pytest.mark.parametrize("name", L.DENSE_OPD_ESTIMATORS)
def test_identical_teacher_gives_exactly_zero_value_and_gradient(name):
    # Not "small": exactly 0. Adam divides by the gradient's own scale, so rounding-size
    # gradients (which the textbook formulas leave, e.g. p_s (1 - sum p_s)) would move weights.
    torch.manual_seed(0)
    z = (3 * torch.randn(2, 5, 50)).requires_grad_()
    logq = torch.log_softmax(z, -1)
    mask = torch.rand(2, 5) > 0.3
    kl = L.OPD_ESTIMATORS[name](logq, logq.detach().clone(), mask, 7)
    assert torch.count_nonzero(kl) == 0
    (g,) = torch.autograd.grad(kl.sum(), z)
    assert torch.count_nonzero(g) == 0
    # and a different teacher is seen: positive KL at every real position, none on padding
    kl = L.OPD_ESTIMATORS[name](logq, torch.log_softmax(torch.randn(2, 5, 50), -1), mask, 7)
    assert bool((kl[mask] > 0).all()) and torch.count_nonzero(kl[~mask]) == 0


def test_dense_estimators_match_autograd_of_the_textbook_kl():
    # The exact-zero form (stop-gradients) must keep the true gradient: compare with the
    # plain formula's autograd on random distributions (float64).
    torch.manual_seed(1)
    z = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.log_softmax(torch.randn(1, 3, 6, dtype=torch.float64), -1)
    m = torch.ones(1, 3, dtype=torch.bool)
    s = torch.log_softmax(z, -1)
    plain = (s.exp() * (s - t)).sum(-1)
    (g_plain,) = torch.autograd.grad(plain.sum(), z)
    (g,) = torch.autograd.grad(L.full_reverse_kl(torch.log_softmax(z, -1), t, m).sum(), z)
    assert torch.allclose(g, g_plain, atol=1e-12)
    fplain = (t.exp() * (t - torch.log_softmax(z, -1))).sum(-1)
    (g_fplain,) = torch.autograd.grad(fplain.sum(), z)
    (g,) = torch.autograd.grad(L.topk_forward_kl(torch.log_softmax(z, -1), t, m, 6).sum(), z)
    assert torch.allclose(g, g_fplain, atol=1e-12)


# ---- OPD plus the verifiable reward ------------------------------------------------------------


def test_opd_reward_advantage_by_hand():
    # one group of N = 2 rows with rewards [1, 0]: mean 0.5, unbiased std sqrt(2 * 0.25 / 1) = 0.707107
    # grpo advantages: +-0.5 / (0.707107 + 1e-6) = +-0.707106; x reward_coef 0.5 = +-0.353553
    kl_adv = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = L.opd_reward_advantage(kl_adv, torch.tensor([[1.0, 0.0]]), mask, 0.5)
    # row 0: [0.1 + 0.353553, -0.2 + 0.353553]; row 1: [0.3 - 0.353553, padding 0]
    assert adv.flatten().tolist() == pytest.approx([0.453553, 0.153553, -0.053553, 0.0], abs=1e-6)
    # coefficient 0: the KL advantage unchanged; an all-equal group adds nothing
    assert torch.equal(L.opd_reward_advantage(kl_adv, torch.tensor([[1.0, 0.0]]), mask, 0.0), kl_adv * mask)
    assert torch.equal(L.opd_reward_advantage(kl_adv, torch.tensor([[1.0, 1.0]]), mask, 0.5), kl_adv * mask)
    with pytest.raises(ValueError, match="rows"):
        L.opd_reward_advantage(kl_adv, torch.tensor([[1.0, 0.0, 1.0]]), mask, 0.5)


def test_opd_estimators_registry():
    assert set(L.OPD_ESTIMATORS) == {"sampled_rkl", "full_rkl", "topk_fkl", "topk_rkl"}
    assert L.REGISTRIES["opd_estimators"] is L.OPD_ESTIMATORS
    with pytest.raises(ValueError, match="unknown opd_estimators name 'topk'.*full_rkl"):
        L.get("opd_estimators", "topk")


# ---- OPDConfig ---------------------------------------------------------------------------------


def test_opd_config_defaults_change_nothing():
    cfg = OPDConfig()
    assert (cfg.estimator, cfg.topk, cfg.reward_coef, cfg.extra_teachers) == ("sampled_rkl", 0, 0.0, ())
    cfg = from_dict(OPDConfig, {"estimator": "topk_rkl", "topk": 4, "extra_teachers": ["a", "b"]})
    assert cfg.extra_teachers == ("a", "b") and cfg.topk == 4


@pytest.mark.parametrize(
    "over, message",
    [
        ({"estimator": "full_kl"}, r"estimator 'full_kl' is not one of \['full_rkl'"),
        ({"estimator": "topk_fkl"}, "estimator 'topk_fkl': topk must be >= 1, got 0"),
        ({"estimator": "topk_rkl", "topk": -1}, "topk must be >= 1"),
        ({"topk": 8}, "topk = 8 is read only by"),
        ({"estimator": "full_rkl", "topk": 8}, "not by estimator 'full_rkl'"),
        ({"reward_coef": -0.5}, "reward_coef must be finite and >= 0"),
        ({"reward_coef": float("nan")}, "reward_coef must be finite"),
        (
            {"teacher": "http://t:8000", "estimator": "full_rkl"},
            "an HTTP teacher supports only estimator = 'sampled_rkl'",
        ),
        (
            {"teacher": "http://t:8000", "estimator": "topk_fkl", "topk": 4},
            "an HTTP teacher supports only",
        ),
        ({"teacher": "http://t:8000", "extra_teachers": ["/ckpt"]}, "extra_teachers with an HTTP teacher"),
        ({"extra_teachers": ["https://t"]}, "extra_teachers: 'https://t' is not a teacher checkpoint"),
        ({"estimator": "full_rkl", "parallel": {"strategy": "fsdp"}}, "parallel.strategy = 'ddp'"),
        ({"estimater": "full_rkl"}, "unknown key 'estimater'.*estimator"),
    ],
)
def test_opd_config_errors_name_the_key(over, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(OPDConfig, over)


def test_an_http_teacher_keeps_the_sampled_estimator_and_the_reward():
    cfg = from_dict(OPDConfig, {"teacher": "http://t:8000", "reward_coef": 0.5})
    assert cfg.estimator == "sampled_rkl" and cfg.reward_coef == 0.5


# ---- a study arm selects an estimator ----------------------------------------------------------

_STUDY = """
name = "est"
[student]
path = "/ckpt/student"
[teacher]
path = "/ckpt/teacher"

[[arm]]
name = "opd_fkl"
label = "OPD (teacher top-8 forward KL + reward)"
method = "opd"

[arm.opd]
estimator = "topk_fkl"
topk = 8
reward_coef = 0.5
extra_teachers = ["/ckpt/teacher2"]
steps = 10

[[arm]]
name = "opd_default"
label = "OPD"
method = "opd"
"""


def test_a_study_arm_passes_its_estimator_to_opd():
    from warmstart.study.arms import stage1_runs
    from warmstart.study.config import parse_study

    study = parse_study(tomllib.loads(_STUDY))
    fkl, default = study.arm
    assert (fkl.stage.estimator, fkl.stage.topk, fkl.stage.reward_coef) == ("topk_fkl", 8, 0.5)
    assert fkl.stage.extra_teachers == ("/ckpt/teacher2",)
    assert default.stage.estimator == "sampled_rkl"
    # different estimators are different runs
    assert [r.name for r in stage1_runs(study.arm)] == ["opd_fkl", "opd_default"]
    bad = _STUDY.replace('estimator = "topk_fkl"\ntopk = 8', 'estimator = "topk_fkl"')
    with pytest.raises(ConfigError, match="topk must be >= 1"):
        parse_study(tomllib.loads(bad))


def test_a_dense_estimator_arm_with_an_http_study_teacher_is_refused_when_the_file_is_read():
    from warmstart.study.config import parse_study

    remote = _STUDY.replace('path = "/ckpt/teacher"', 'path = "http://127.0.0.1:8000/v1"')
    with pytest.raises(ConfigError, match=r"arm\(s\) \['opd_fkl'\]: extra_teachers .* HTTP server"):
        parse_study(tomllib.loads(remote))
    remote = remote.replace('extra_teachers = ["/ckpt/teacher2"]\n', "")
    with pytest.raises(ConfigError, match=r"arm\(s\) \['opd_fkl'\]: a dense OPD estimator .* HTTP teacher"):
        parse_study(tomllib.loads(remote))
    # the sampled estimator is what an HTTP teacher serves: that study reads
    sampled = remote.replace('estimator = "topk_fkl"\ntopk = 8\n', "")
    assert [a.stage.estimator for a in parse_study(tomllib.loads(sampled)).arm] == ["sampled_rkl"] * 2
