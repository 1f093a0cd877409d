"""The one Stage-1 selection rule (warmstart.stages.selection), against sequences worked by hand."""

import math

from warmstart.stages.selection import Selection, observe, over_step


def _run(evals, arm="over", patience=2, over_multiple=3.0, max_steps=100, target=None, min_delta=0.0):
    """Feed (step, acc, loss) validations; returns the states and which saves happened."""
    sel = Selection(stop_at=max_steps)
    saves = []
    for step, acc, loss in evals:
        d = observe(
            sel,
            step,
            acc,
            loss,
            arm=arm,
            patience=patience,
            min_delta=min_delta,
            over_multiple=over_multiple,
            max_steps=max_steps,
            matched_target=target,
        )
        sel = d.selection
        saves.append((d.save_best, d.save_matched))
    return sel, saves


EVALS = [(0, 0.10, 2.0), (10, 0.30, 1.5), (20, 0.30, 1.6), (30, 0.25, 1.4), (40, 0.28, 1.3)]


def test_early_arm_stops_after_patience_at_the_step_it_runs_out():
    sel, saves = _run(EVALS, arm="early", patience=2)
    # best: step 10 (0.30); 20 ties at a higher loss (bad 1), 30 worse (bad 2) -> stop at 30
    assert (sel.best_step, sel.best_acc, sel.best_loss) == (10, 0.30, 1.5)
    assert sel.stop_at == 30
    assert [b for b, _ in saves] == [True, True, False, False, False]


def test_over_arm_goes_on_to_the_multiple_of_the_best_step():
    sel, _ = _run(EVALS, arm="over", patience=2, over_multiple=3.0)
    assert sel.stop_at == 30  # max(30 = 3 x 10, the step the patience ran out at)
    sel, _ = _run(EVALS, arm="over", patience=2, over_multiple=5.0)
    assert sel.stop_at == 50
    assert over_step(10, 5.0, 30, max_steps=45) == 45  # capped by max_steps
    assert over_step(0, 3.0, 20, max_steps=100) == 20  # a best at the init: at least where it stands


def test_equal_accuracy_at_lower_loss_is_better_and_resets_patience():
    evals = [(0, 0.2, 2.0), (10, 0.2, 1.9), (20, 0.1, 1.0), (30, 0.2, 1.8)]
    sel, saves = _run(evals, patience=2)
    assert sel.best_step == 30 and sel.bad_evals == 0 and sel.stop_at == 100
    assert [b for b, _ in saves] == [True, True, False, True]


def test_min_delta_needs_a_real_improvement():
    evals = [(0, 0.20, 2.0), (10, 0.21, 1.0), (20, 0.26, 1.5)]
    sel, _ = _run(evals, patience=5, min_delta=0.05)
    # 0.21 is not above 0.20 + 0.05 and not equal: no; 0.26 is above 0.25: yes
    assert sel.best_step == 20 and sel.bad_evals == 0


def test_matched_is_the_first_validation_at_the_target_and_only_once():
    sel, saves = _run(EVALS, target=0.28, patience=10)
    assert sel.matched_step == 10
    assert [m for _, m in saves] == [False, True, False, False, False]
    sel, saves = _run(EVALS, target=0.5, patience=10)
    assert sel.matched_step is None and not any(m for _, m in saves)


def test_patience_does_not_move_a_decided_stop():
    evals = [(0, 0.3, 1.0), (10, 0.2, 1.0), (20, 0.2, 1.0), (30, 0.1, 1.0), (40, 0.1, 1.0)]
    sel, _ = _run(evals, arm="over", patience=2, over_multiple=3.0)
    assert sel.stop_at == 20  # decided at step 20 (3 x max(best 0, 1) = 3 -> at least 20)


def test_state_round_trips_through_json_with_an_infinite_loss():
    s = Selection(stop_at=7)
    d = s.to_dict()
    assert d["best_loss"] is None
    back = Selection.from_dict(d)
    assert back == s and math.isinf(back.best_loss)


def test_best_is_frozen_once_the_early_arm_has_ended():
    # best 0.3 at 10; 20, 30 worse -> early ends at 30, over to 3 x 10 = 30 ... use multiple 6 -> 60
    evals = [(0, 0.1, 2.0), (10, 0.3, 1.5), (20, 0.2, 1.5), (30, 0.2, 1.5), (40, 0.9, 0.1), (50, 0.95, 0.1)]
    sel, saves = _run(evals, arm="over", patience=2, over_multiple=6.0, target=0.5)
    assert (sel.best_step, sel.best_acc, sel.early_end, sel.stop_at) == (10, 0.3, 30, 60)
    assert [b for b, _ in saves] == [True, True, False, False, False, False]
    # the matched checkpoint still follows the over run: first at the target
    assert sel.matched_step == 40


def test_a_capped_over_step_still_freezes_the_best():
    evals = [(0, 0.1, 2.0), (10, 0.3, 1.5), (20, 0.2, 1.5), (30, 0.2, 1.5), (40, 0.9, 0.1)]
    sel, _ = _run(evals, arm="over", patience=2, over_multiple=10.0, max_steps=50)
    assert sel.stop_at == 50 and sel.early_end == 30 and sel.best_step == 10
