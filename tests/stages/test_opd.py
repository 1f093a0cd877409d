"""Stage-1 on-policy distillation on the toy family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from warmstart import losses
from warmstart.config import from_dict
from warmstart.models import load_policy
from warmstart.prompt_sharing import score_rows
from warmstart.rollout import SamplingParams
from warmstart.sampler import RolloutConfig, make_sampler
from warmstart.scoring import score_rollouts
from warmstart.stages.opd import OPDConfig, train_opd
from warmstart.teacher import InProcessScorer


def _cfg(student, teacher, synth_dir, out, **over):
    base = {
        "init": str(student),
        "teacher": str(teacher),
        "data": str(synth_dir),
        "out_dir": str(out),
        "steps": 3,
        "prompts_per_step": 4,
        "n": 2,
        "max_new_tokens": 12,
        "micro_batch": 8,
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
    }
    return from_dict(OPDConfig, {**base, **over})


def test_teacher_equal_to_student_gives_zero_advantage_and_no_update(toy_dir, synth_dir, tmp_path):
    pol = load_policy(toy_dir)
    from warmstart.data.loaders import load_problems

    probs = load_problems(synth_dir, split="train").problems[:3]
    ro = make_sampler(RolloutConfig(), pol.model, pol.processor).sample(
        probs, SamplingParams(n=2, max_new_tokens=10, seed=1)
    )
    # the update's scorer (each shared prompt once, as the in-process teacher scores too)
    s = score_rows(pol.model, ro)
    t = InProcessScorer(load_policy(toy_dir).model).score(ro)
    adv = losses.reverse_kl_advantage(s.logp_BT, t.logp_BT, ro.response_mask_BT)
    assert torch.count_nonzero(adv) == 0
    # and a whole OPD run against itself leaves every weight exactly where it was
    res = train_opd(_cfg(toy_dir, toy_dir, synth_dir, tmp_path / "self", steps=2), show_progress=False)
    before, after = (
        load_file(str(Path(toy_dir) / "model.safetensors")),
        load_file(str(Path(res["model"]) / "model.safetensors")),
    )
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (tmp_path / "self" / "metrics.jsonl").read_text().splitlines()]
    # the advantage (from the update's own forward) was exactly zero: the weights above did not
    # move; the logged reverse KL uses the sampler's log-probs, equal to the scorer's within 1e-5
    assert all(abs(r["reverse_kl"]) < 1e-5 for r in rows)


def _exact_reverse_kl(student, teacher, ro) -> float:
    """Full-vocabulary KL(student || teacher) averaged over the response positions of ``ro``."""
    fs = ro.full_sequences()
    P = ro.prompts.input_ids_QP.shape[1]
    with torch.no_grad():
        ls = torch.log_softmax(
            student(**fs.model_inputs(), use_cache=False).logits[:, P - 1 : -1].float(), -1
        )
        lt = torch.log_softmax(
            teacher(**fs.model_inputs(), use_cache=False).logits[:, P - 1 : -1].float(), -1
        )
    kl_BT = (ls.exp() * (ls - lt)).sum(-1)
    return float(losses.masked_mean(kl_BT, ro.response_mask_BT))


def test_opd_lowers_reverse_kl_to_a_fixed_teacher(toy_dir, synth_dir, tmp_path):
    from warmstart.data.loaders import load_problems
    from warmstart.models.toy import SIZES, build_toy_model
    from warmstart.train import save_model_atomic

    # a different fixed teacher: same tokenizer, other random weights, with a sharpened
    # head so that it prefers some tokens clearly (random inits are near uniform)
    pol = load_policy(toy_dir)
    teacher = build_toy_model(SIZES["xs"], pol.tokenizer, seed=7)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(5.0)
    tdir = save_model_atomic(teacher, pol.processor, tmp_path / "teacher")
    res = train_opd(
        _cfg(toy_dir, tdir, synth_dir, tmp_path / "opd", steps=20, optim={"lr": 3e-3}), show_progress=False
    )
    rkl = [json.loads(x)["reverse_kl"] for x in (tmp_path / "opd" / "metrics.jsonl").read_text().splitlines()]
    assert len(rkl) == 20 and all(v > 0 for v in rkl)
    # exact (full-vocabulary) reverse KL on fixed held-out contexts, before vs after
    probe = load_problems(synth_dir, split="validation").problems[:6]
    ro = make_sampler(RolloutConfig(), pol.model, pol.processor).sample(
        probe, SamplingParams(n=2, max_new_tokens=12, seed=5)
    )
    before = _exact_reverse_kl(pol.model, teacher, ro)
    after = _exact_reverse_kl(load_policy(res["model"]).model, teacher, ro)
    assert after < 0.8 * before, (before, after)


def test_distillation_advantage_comes_from_the_update_forward(toy_dir, synth_dir):
    """TrainBatch.distillation: the objective's advantage is -(log pi_s - log pi_t) of its own forward,
    equal to the advantage from a separate scoring pass (the one OPD no longer runs)."""
    from warmstart.batch import TrainBatch
    from warmstart.data.loaders import load_problems
    from warmstart.models.toy import SIZES, build_toy_model

    pol = load_policy(toy_dir, trainable=True)
    pol.model.requires_grad_(True)
    probs = load_problems(synth_dir, split="train").problems[:3]
    ro = make_sampler(RolloutConfig(), pol.model, pol.processor).sample(
        probs, SamplingParams(n=2, max_new_tokens=10, seed=4)
    )
    teacher = build_toy_model(SIZES["xs"], pol.tokenizer, seed=9)
    t_logp = InProcessScorer(teacher).score(ro).logp_BT
    cfg = losses.LossConfig()
    denom = losses.aggregation_denom(cfg.agg, ro.response_mask_BT)
    scores = score_rollouts(pol.model, ro, with_entropy=False, grad=True)
    loss_self, _ = losses.OBJECTIVES["policy_gradient"](
        TrainBatch.distillation(ro, t_logp), scores, cfg, denom
    )
    adv = losses.reverse_kl_advantage(score_rollouts(pol.model, ro).logp_BT, t_logp, ro.response_mask_BT)
    assert torch.count_nonzero(adv) > 0
    loss_given, _ = losses.OBJECTIVES["policy_gradient"](TrainBatch(ro, adv), scores, cfg, denom)
    assert abs(float(loss_self) - float(loss_given)) < 1e-6
    g_self = torch.autograd.grad(loss_self, pol.model.lm_head.weight, retain_graph=True)[0]
    g_given = torch.autograd.grad(loss_given, pol.model.lm_head.weight)[0]
    assert torch.allclose(g_self, g_given, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="teacher_logp_BT"):
        TrainBatch(ro, None)
