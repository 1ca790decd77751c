"""The verdict of the radial-basis comparison on hand-made losses."""

import pytest

from tvcsp.rbf_selection import verdict


def test_verdict_is_decisive_only_when_the_margin_exceeds_the_seed_spread():
    losses = {"gaussian": {0: 5.0, 1: 5.2}, "bessel": {0: 4.0, 1: 4.4}, "hybrid": {0: 4.9, 1: 4.95}}
    v = verdict(losses)
    assert v["winner"] == "bessel"
    assert v["final_val_loss"]["bessel"] == pytest.approx(4.2)
    assert v["margin"] == pytest.approx(4.925 - 4.2)  # runner-up: hybrid
    assert v["seed_spread"] == pytest.approx(0.4)  # bessel's
    assert v["decisive"] is True and v["wins_every_seed"] is True
    close = verdict({"gaussian": {0: 4.0, 1: 4.6}, "bessel": {0: 4.2, 1: 4.5}})
    assert close["winner"] == "gaussian" and close["margin"] == pytest.approx(0.05)
    assert close["decisive"] is False and close["wins_every_seed"] is False  # bessel has the lower loss of seed 1


def test_verdict_with_one_seed_names_a_winner_without_deciding():
    v = verdict({"gaussian": {0: 3.0}, "hybrid": {0: 2.5}})
    assert v["winner"] == "hybrid" and v["margin"] == pytest.approx(0.5)
    assert v["seed_spread"] is None and v["decisive"] is None
