import numpy as np
import pytest

from clight.metrics import (
    IntransigenceReference,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    intransigence,
    summarize,
)

# a[k][j]: accuracy on task j after training task k (upper triangle: unseen tasks)
A = np.array(
    [
        [0.90, 0.10, 0.20],
        [0.60, 0.80, 0.30],
        [0.50, 0.70, 0.95],
    ]
)
B = [0.10, 0.15, 0.25]  # the untrained model


def test_average_accuracy_by_hand():
    assert average_accuracy(A, 0) == pytest.approx(0.90)
    assert average_accuracy(A, 1) == pytest.approx((0.60 + 0.80) / 2)
    assert average_accuracy(A) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_average_incremental_accuracy_by_hand():
    aa = [0.90, 0.70, (0.50 + 0.70 + 0.95) / 3]
    assert average_incremental_accuracy(A) == pytest.approx(sum(aa) / 3)


def test_backward_transfer_by_hand():
    # (a20 - a00 + a21 - a11) / 2 = (0.5 - 0.9 + 0.7 - 0.8) / 2
    assert backward_transfer(A) == pytest.approx(-0.25)
    assert backward_transfer(A, 1) == pytest.approx(0.60 - 0.90)
    assert backward_transfer(A, 0) is None


def test_forgetting_by_hand():
    # task 0: max(0.9, 0.6) - 0.5 = 0.4 ; task 1: max(0.8) - 0.7 = 0.1
    assert forgetting(A) == pytest.approx(0.25)
    assert forgetting(A, 1) == pytest.approx(0.30)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    a = np.array([[0.5, 0, 0], [0.9, 0.8, 0], [0.6, 0.8, 0.9]])
    # task 0 peaked after task 1 (0.9), so forgetting is 0.9 - 0.6, not 0.5 - 0.6
    assert forgetting(a) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)


def test_forgetting_ignores_accuracy_before_the_task_was_trained():
    # domain-incremental: task 1 already scores 0.95 in row 0, before it is trained; its best
    # accuracy after training is a[1][1] = 0.70, and it ends at 0.60
    a = np.array([[0.90, 0.95, 0.50], [0.80, 0.70, 0.55], [0.75, 0.60, 0.90]])
    # documented convention: task 0: max(0.90, 0.80) - 0.75 = 0.15; task 1: 0.70 - 0.60 = 0.10
    assert forgetting(a) == pytest.approx((0.15 + 0.10) / 2)
    # (the max over all earlier rows would give task 1 0.95 - 0.60 = 0.35 and a mean of 0.25)
    s = summarize(a)
    assert s["forgetting"] == pytest.approx(0.125)
    assert "max_{j<=i<k}" in s["forgetting_convention"] and "after it was trained" in s["forgetting_convention"]


def test_intransigence_by_hand_with_its_reference_written_out():
    joint = IntransigenceReference([0.95, 0.90, 1.00], kind="joint", source="runs/joint_0..k")
    # I_j = a*_j - a[j][j]: 0.95 - 0.90, 0.90 - 0.80, 1.00 - 0.95
    mean, per_task = intransigence(A, joint)
    assert per_task == pytest.approx([0.05, 0.10, 0.05])
    assert mean == pytest.approx(0.20 / 3)
    assert intransigence(A, joint, k=1)[0] == pytest.approx(0.075)
    s = summarize(A, B, reference=joint)
    assert s["intransigence"] == pytest.approx(0.20 / 3) and s["intransigence_per_task"] == pytest.approx([0.05, 0.10, 0.05])
    assert "jointly on tasks 0..k" in s["intransigence_reference"] and "runs/joint_0..k" in s["intransigence_reference"]
    single = summarize(A, reference=IntransigenceReference([1.0, 1.0, 1.0], kind="single_task"))
    assert "task k alone" in single["intransigence_reference"]
    assert not any(key.startswith("intransigence") for key in summarize(A, B))  # only with a reference


def test_intransigence_needs_a_reference_with_its_provenance():
    with pytest.raises(TypeError, match="IntransigenceReference"):
        intransigence(A, [0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="kind"):
        IntransigenceReference([0.9], kind="oracle")
    with pytest.raises(ValueError, match="reference accuracies for 3 tasks"):
        intransigence(A, IntransigenceReference([0.9, 0.9], kind="joint"))


def test_forward_transfer_gem_convention_by_hand():
    # (a01 - b1 + a12 - b2) / 2 = (0.10 - 0.15 + 0.30 - 0.25) / 2
    assert forward_transfer(A, B) == pytest.approx(0.0)
    assert forward_transfer(A, [0, 0.05, 0.05]) == pytest.approx((0.05 + 0.25) / 2)


def test_no_forgetting_gives_zero_bwt_and_forgetting():
    a = np.array([[0.9, 0.0], [0.9, 0.7]])
    assert backward_transfer(a) == 0.0 and forgetting(a) == 0.0


def test_summary_of_a_partial_run():
    s = summarize(A[:2], B)
    assert s["tasks_finished"] == 2
    assert s["average_accuracy"] == pytest.approx(0.7)
    assert s["forward_transfer"] == pytest.approx(0.10 - 0.15)
    assert "GEM" in s["forward_transfer_convention"]


def test_bad_matrix_shape_is_rejected():
    with pytest.raises(ValueError, match="more rows than tasks"):
        average_accuracy(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        average_accuracy(np.zeros(3))
