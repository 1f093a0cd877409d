"""The training step's seams on the toy: TrainBatch shapes and rows, and the objective registry."""

from __future__ import annotations

import pytest
import torch

from warmstart import losses
from warmstart.config import ConfigError, from_dict
from warmstart.data.loaders import load_problems
from warmstart.models import load_policy
from warmstart.sampler import RolloutConfig
from warmstart.scoring import score_rollouts
from warmstart.stages.common import teacher_forced
from warmstart.stages.grpo import GRPOConfig, train_grpo
from warmstart.stages.opd import OPDConfig, train_opd
from warmstart.stages.pretrain import PretrainConfig, pretrain
from warmstart.stages.sft import SFTConfig, train_sft
from warmstart.train import LossConfig, OptimConfig, TrainBatch, Trainer


def _trainable(toy_dir):
    pol = load_policy(toy_dir, trainable=True)
    for p in pol.model.parameters():
        p.requires_grad_(True)
    return pol


def _rationales(pol, synth_dir, n=4):
    probs = load_problems(synth_dir, split="train").problems[:n]
    return teacher_forced(probs, [p.rationale for p in probs], pol.processor)


def test_train_batch_checks_shapes_and_selects_rows(toy_dir, synth_dir):
    pol = load_policy(toy_dir)
    tf = _rationales(pol, synth_dir)
    B, T = tf.response_mask_BT.shape
    with pytest.raises(ValueError, match=r"TrainBatch.ref_logp_BT has shape \(4, 2\)"):
        TrainBatch(tf, torch.zeros(B, T), ref_logp_BT=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="adv_BT"):
        TrainBatch(tf, torch.zeros(B))  # a per-row adv_B must be spread over the tokens first
    adv_BT = torch.arange(B * T, dtype=torch.float32).view(B, T)
    batch = TrainBatch(tf, adv_BT, old_logp_BT=-adv_BT, teacher_logp_BT=adv_BT + 1)
    sub = batch.select([2, 0])
    assert sub.num_rows == 2 and sub.ref_logp_BT is None
    assert torch.equal(sub.adv_BT, adv_BT[[2, 0]])
    assert torch.equal(sub.old_logp_BT, -adv_BT[[2, 0]])
    assert torch.equal(sub.teacher_logp_BT, adv_BT[[2, 0]] + 1)
    assert torch.equal(sub.mask_BT, tf.response_mask_BT[[2, 0]])
    assert sub.rollouts.texts_B == [tf.texts_B[2], tf.texts_B[0]]
    assert torch.equal(TrainBatch.supervised(tf).adv_BT, torch.ones(B, T))


def test_sft_step_loss_is_the_token_mean_nll(toy_dir, synth_dir):
    # advantage 1, ratio 1, vanilla_pg: the logged loss is the NLL of the batch before the step
    pol = _trainable(toy_dir)
    tf = _rationales(pol, synth_dir)
    with torch.no_grad():
        nll = -losses.masked_mean(
            score_rollouts(pol.model, tf, with_entropy=False).logp_BT, tf.response_mask_BT
        )
    trainer = Trainer(pol.model, OptimConfig(lr=1e-3), LossConfig(policy_loss="vanilla_pg"), total_steps=1)
    st = trainer.update(TrainBatch.supervised(tf), micro_batch=2, with_entropy=False)
    assert st.loss == pytest.approx(float(nll), rel=1e-5)
    assert st.pg_loss == st.loss and st.kl == 0.0 and st.clip_frac == 0.0
    assert st.num_tokens == int(tf.response_mask_BT.sum())


def _nll_objective(batch, scores, cfg, denom):
    """The token-mean NLL written directly (no advantage, no ratio)."""
    return losses.token_mean(-scores.logp_BT, batch.mask_BT, denom=denom), {}


def test_a_direct_objective_from_the_registry_trains_like_the_sft_path(toy_dir, synth_dir, monkeypatch):
    monkeypatch.setitem(losses.OBJECTIVES, "direct_nll", _nll_objective)
    params = {}
    for name, cfg in (
        ("pg", LossConfig(policy_loss="vanilla_pg")),
        ("direct", LossConfig(objective="direct_nll")),
    ):
        pol = _trainable(toy_dir)
        tf = _rationales(pol, synth_dir)
        trainer = Trainer(pol.model, OptimConfig(lr=1e-3), cfg, total_steps=1)
        st = trainer.update(TrainBatch.supervised(tf), micro_batch=2, with_entropy=False)
        assert not st.skipped
        params[name] = {n: p.detach().clone() for n, p in pol.model.named_parameters()}
    # the gradient of -A * logp with A = 1 is the gradient of -logp: the same update
    for n, p in params["pg"].items():
        torch.testing.assert_close(params["direct"][n], p, rtol=1e-6, atol=1e-7)
    before = load_policy(toy_dir).model.state_dict()
    assert any(not torch.equal(p, before[n]) for n, p in params["pg"].items())  # and it did train


def _bad_stats_objective(batch, scores, cfg, denom):
    return losses.token_mean(-scores.logp_BT, batch.mask_BT, denom=denom), {"distill": 1.0}


def test_an_objective_with_unknown_stats_is_an_error(toy_dir, synth_dir, monkeypatch):
    monkeypatch.setitem(losses.OBJECTIVES, "bad_stats", _bad_stats_objective)
    pol = _trainable(toy_dir)
    trainer = Trainer(pol.model, OptimConfig(lr=1e-3), LossConfig(objective="bad_stats"), total_steps=1)
    with pytest.raises(ValueError, match=r"returned stats \['distill'\]; valid: \['pg_loss'"):
        trainer.update(TrainBatch.supervised(_rationales(pol, synth_dir, n=2)), micro_batch=2)


@pytest.mark.parametrize(
    ("cls", "train", "message"),
    [
        (SFTConfig, train_sft, "sft: init, data must be set"),
        (OPDConfig, train_opd, "opd: init, teacher, data must be set"),
        (GRPOConfig, train_grpo, "grpo: init, data must be set"),
        (PretrainConfig, pretrain, "pretrain: data must be set"),
    ],
)
def test_stage_tables_parse_without_paths_and_the_stage_names_what_is_missing(cls, train, message, tmp_path):
    # a study parses its stage tables before it knows the checkpoints they start from
    cfg = from_dict(cls, {"out_dir": str(tmp_path / "run")})
    assert cfg.rollout == RolloutConfig()
    with pytest.raises(ConfigError, match=message):
        train(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_sft_on_teacher_solutions_needs_a_teacher_when_it_starts(tmp_path):
    cfg = from_dict(SFTConfig, {"init": "m", "data": "d", "solutions": "teacher", "out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="solutions = 'teacher' needs a teacher"):
        train_sft(cfg, show_progress=False)
