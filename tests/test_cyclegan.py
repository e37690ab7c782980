"""cyclegan.py's pieces that need no networks: the history pool and the learning-rate schedule (the
model and its step are tried in tests/test_networks.py)."""
import numpy as np

import cyclegan


def test_history_pool_fills_then_swaps_about_half():
    rng = np.random.default_rng(0)
    pool = cyclegan.HistoryPool(3, rng)
    first = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(pool.query(first), first)
    assert len(pool.images) == 3
    returned_old = 0
    for value in range(100, 400):
        out = pool.query(np.array([[value]], np.float32))
        returned_old += int(out[0, 0] != value)
        assert len(pool.images) == 3
    assert 100 < returned_old < 200
    passthrough = cyclegan.HistoryPool(0, rng)
    assert passthrough.query(first) is first and passthrough.images == []


def test_learning_rate_is_constant_then_decays_linearly_to_zero():
    rates = [cyclegan.learning_rate_at(e, 2e-4, 100, 100) for e in range(200)]
    assert rates[:100] == [2e-4] * 100
    assert np.isclose(rates[100], 2e-4 * 100 / 101)
    assert np.allclose(np.diff(rates[99:]), -2e-4 / 101)
    assert 0 < rates[-1] < 2e-4 / 100
