"""Session fixtures shared by the stage, eval and study tests: a small synthetic world
and a toy model built for it (real files, real transformers classes)."""

from __future__ import annotations

import os

import pytest
import torch

# Deterministic, single-threaded CPU math for every test (resume/equality tests compare bits).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from warmstart.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(seed=0, n_train=64, n_validation=16, n_test=16, n_ood=16), out)
    return out


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory, synth_dir):
    """An untrained xs toy whose tokenizer was trained on the synthetic texts."""
    from warmstart.data import prompts
    from warmstart.data.loaders import load_problems
    from warmstart.models.toy import save_toy

    train = load_problems(synth_dir, split="train").problems
    corpus = [prompts.user_text(p) for p in train] + [p.rationale for p in train]
    return save_toy(tmp_path_factory.mktemp("toy") / "xs", "xs", seed=0, corpus=corpus, vocab_size=768)


@pytest.fixture(scope="session")
def trained_toy(tmp_path_factory, synth_dir, toy_dir):
    """The toy after a short SFT on the synthetic training split: partly right, so RL has a signal."""
    from warmstart.config import from_dict
    from warmstart.stages.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("trained")
    cfg = from_dict(
        SFTConfig,
        {
            "init": str(toy_dir),
            "data": str(synth_dir),
            "out_dir": str(out),
            "arm": "over",
            "over_multiple": 1.0,
            "max_steps": 80,
            "batch_size": 16,
            "micro_batch": 16,
            "eval_every": 80,
            "patience": 100,
            "val_problems": 8,
            "max_new_tokens": 40,
            "checkpoint_every": 1000,
            "optim": {"lr": 3e-3, "vision_lr_mult": 3.0},
        },
    )
    return train_sft(cfg, show_progress=False)["model"]
