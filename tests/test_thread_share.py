"""The study scheduler's thread shares: idle slots' threads go to the steps that run."""

from __future__ import annotations

import torch

from warmstart.study.execute import thread_shares
from warmstart.thread_share import SHARE_FILE_ENV, follow_share, write_share


def test_shares_give_idle_slots_threads_to_the_running_steps():
    assert thread_shares([], jobs=2, threads_per_job=1) == {}
    assert thread_shares(["data"], jobs=2, threads_per_job=1) == {"data": 2}
    assert thread_shares(["student", "teacher"], jobs=2, threads_per_job=1) == {"student": 1, "teacher": 1}
    # 3 jobs x 1 thread, 2 running: the first started takes the odd thread
    assert thread_shares(["a", "b"], jobs=3, threads_per_job=1) == {"a": 2, "b": 1}
    assert thread_shares(["a"], jobs=2, threads_per_job=2) == {"a": 4}
    assert sum(thread_shares(["a", "b", "c"], jobs=4, threads_per_job=2).values()) == 8


def test_a_worker_follows_its_share_file(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert follow_share() is None  # outside a study: nothing to follow
        share = tmp_path / "step.threads.json"
        monkeypatch.setenv(SHARE_FILE_ENV, str(share))
        assert follow_share() is None  # no share written yet
        write_share(share, 2)
        assert follow_share() == 2 and torch.get_num_threads() == 2
        assert follow_share() is None  # unchanged file: no re-read
        write_share(share, 1)
        assert follow_share() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
