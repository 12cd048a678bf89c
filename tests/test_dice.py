"""Dice on hand-computed cases: the one implementation every reported number goes through."""

import pytest
import torch

from utils import DiceMeter, binarize, dice_per_image


def masks(*rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(1)  # (N, 1, H, W)


def test_dice_hand_computed():
    pred = masks([[1, 1, 0, 0]], [[1, 0, 0, 0]])
    target = masks([[1, 0, 0, 0]], [[0, 0, 1, 1]])
    # image 0: |P∩G|=1, |P|+|G|=3 -> 2/3; image 1: no overlap -> 0
    assert dice_per_image(pred, target).tolist() == pytest.approx([2 / 3, 0.0])


def test_both_empty_scores_one_and_one_empty_scores_zero():
    empty = masks([[0, 0], [0, 0]])
    full = masks([[1, 1], [1, 1]])
    assert dice_per_image(empty, empty).item() == 1.0
    assert dice_per_image(full, empty).item() == 0.0
    assert dice_per_image(empty, full).item() == 0.0


def test_meter_mean_differs_from_pooled():
    meter = DiceMeter()
    # image 1 perfect (4 px each); image 2: |P∩G|=1, |P|+|G|=3 -> 2/3
    meter.update(masks([[1, 1], [1, 1]]), masks([[1, 1], [1, 1]]))
    meter.update(masks([[1, 1], [0, 0]]), masks([[1, 0], [0, 0]]))
    assert meter.count == 2
    assert meter.mean == pytest.approx((1 + 2 / 3) / 2)
    assert meter.pooled == pytest.approx(2 * (4 + 1) / (8 + 3))
    assert meter.per_image == pytest.approx([1.0, 2 / 3])


def test_empty_meter_is_nan():
    assert torch.isnan(torch.tensor(DiceMeter().mean))


def test_binarize_matches_sigmoid_threshold():
    logits = torch.linspace(-5, 5, 101)
    for threshold in (0.3, 0.5, 0.8):
        assert torch.equal(binarize(logits, threshold), torch.sigmoid(logits) > threshold)
    with pytest.raises(ValueError):
        binarize(logits, 1.0)
