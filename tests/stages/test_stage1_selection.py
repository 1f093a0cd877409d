"""SFT and OPD select checkpoints by the one shared rule, keep matched/, and log their compute; stage 0's stop rule."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from warmstart.config import from_dict
from warmstart.stages.opd import OPDConfig, train_opd
from warmstart.stages.pretrain import PretrainConfig, pretrain
from warmstart.stages.sft import SFTConfig, train_sft


def _rows(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return all((x[k] == y[k]).all() for k in x)


def test_opd_with_validation_keeps_best_over_and_matched_like_sft(toy_dir, trained_toy, synth_dir, tmp_path):
    out = tmp_path / "opd"
    cfg = from_dict(
        OPDConfig,
        {
            "init": str(toy_dir),
            "teacher": str(trained_toy),
            "data": str(synth_dir),
            "out_dir": str(out),
            "val_split": "test",
            "val_problems": 8,
            "eval_every": 1,
            "patience": 1,
            "over_multiple": 2.0,
            "steps": 6,
            "prompts_per_step": 4,
            "n": 2,
            "max_new_tokens": 12,
            "micro_batch": 8,
            "matched_target": 0.0,  # the init already reaches it: matched = step 0
            "optim": {"lr": 1e-3},
        },
    )
    res = train_opd(cfg, show_progress=False)
    rows = _rows(out)
    vals = [r for r in rows if "val_accuracy" in r]
    assert vals[0]["step"] == 0 and "val_loss" in vals[0]  # the init is a candidate
    sel = res["selection"]
    assert sel["split"] == "test" and sel["matched_step"] == 0 and sel["matched_target"] == 0.0
    # the rule's decisions, replayed from the logged validations
    from warmstart.stages.selection import Selection, observe

    s = Selection(stop_at=6)
    for r in vals:
        s = observe(
            s,
            r["step"],
            r["val_accuracy"],
            r["val_loss"],
            arm="over",
            patience=1,
            min_delta=0.0,
            over_multiple=2.0,
            max_steps=6,
            matched_target=0.0,
        ).selection
    assert (s.best_step, s.stop_at) == (sel["best_step"], res["steps"])
    assert res["steps"] == max(r["step"] for r in rows)
    for ck in ("best", "final", "matched"):
        assert (out / ck / "model.safetensors").exists()
    assert _same_weights(out / "matched", Path(toy_dir))  # step 0's weights
    comp = res["compute"]
    train_rows = [r for r in rows if "step_time_s" in r]
    assert comp["steps"] == len(train_rows) == res["steps"]
    assert comp["sequences"] == 8 * res["steps"]  # 4 prompts x 2 samples per step
    assert comp["tokens"] == sum(r["tokens"] for r in train_rows)


def test_sft_matched_checkpoint_and_compute(toy_dir, synth_dir, tmp_path):
    out = tmp_path / "sft"
    cfg = from_dict(
        SFTConfig,
        {
            "init": str(toy_dir),
            "data": str(synth_dir),
            "out_dir": str(out),
            "arm": "over",
            "val_split": "test",
            "val_problems": 8,
            "max_steps": 4,
            "batch_size": 8,
            "micro_batch": 8,
            "eval_every": 2,
            "max_new_tokens": 12,
            "matched_target": 2.0,  # unreachable: no matched/
            "optim": {"lr": 1e-3},
        },
    )
    res = train_sft(cfg, show_progress=False)
    assert res["selection"]["matched_step"] is None and not (out / "matched").exists()
    assert res["compute"]["sequences"] == 4 * 8 and res["compute"]["steps"] == 4
    assert res["selection"]["over_step"] == 4


def test_pretrain_stop_rule_ends_at_the_first_validation_that_passes(synth_dir, tmp_path):
    common = {
        "data": str(synth_dir),
        "size": "xs",
        "steps": 4,
        "batch_size": 8,
        "eval_every": 2,
        "val_problems": 4,
        "max_new_tokens": 8,
        "stop_split": "test",
        "stop_problems": 6,
        "stop_k": 2,
    }
    # bar 1.0: never stops; the rows show what the rule saw at every validation
    never = pretrain(
        from_dict(PretrainConfig, {**common, "out_dir": str(tmp_path / "a"), "stop_min_pass": 1.0}),
        show_progress=False,
    )
    assert never["steps"] == 4 and never["stop_rule"]["stop"] is False
    rows = [r for r in _rows(tmp_path / "a") if "stop_rule" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]
    fams = rows[-1]["stop_rule"]["per_family_pass_at_k"]
    assert fams and all(0.0 <= v <= 1.0 for v in fams.values())
    assert rows[-1]["stop_rule"]["rule"] == "first validation with every family's pass@2 >= 1.0 on split test"


def test_a_stop_rule_ends_sft_at_the_validation_that_says_stop(toy_dir, synth_dir, tmp_path):
    seen = []

    def rule(sampler, step):
        seen.append(step)
        return {"stop": step >= 2, "step": step}

    cfg = from_dict(
        SFTConfig,
        {
            "init": str(toy_dir),
            "data": str(synth_dir),
            "out_dir": str(tmp_path / "s"),
            "arm": "over",
            "val_split": "test",
            "val_problems": 4,
            "max_steps": 8,
            "batch_size": 4,
            "micro_batch": 4,
            "eval_every": 1,
            "patience": 100,
            "max_new_tokens": 8,
        },
    )
    res = train_sft(cfg, show_progress=False, stop_rule=rule)
    assert seen == [0, 1, 2] and res["steps"] == 2
    assert res["stop_rule"] == {"stop": True, "step": 2}
    assert (tmp_path / "s" / "final" / "model.safetensors").exists()
