import numpy as np
import pytest

from phasespace.tasks import Task, all_pairs, n_train, train_mask


def test_all_pairs_standard():
    tokens, labels = all_pairs(Task(7))
    assert tokens.shape == (49, 2) and tokens.dtype == np.int32
    a, b = tokens[:, 0], tokens[:, 1]
    np.testing.assert_array_equal(a, np.repeat(np.arange(7), 7))
    np.testing.assert_array_equal(b, np.tile(np.arange(7), 7))
    np.testing.assert_array_equal(labels, (a + b) % 7)


def test_all_pairs_variants():
    t = Task(5, diff_vocab=True, eqn_sign=True)
    assert t.vocab == 11 and t.n_ctx == 3
    tokens, labels = all_pairs(t)
    assert tokens.shape == (25, 3)
    assert tokens[:, 1].min() == 5 and tokens[:, 1].max() == 9
    assert np.all(tokens[:, 2] == 10)
    np.testing.assert_array_equal(labels, (tokens[:, 0] + tokens[:, 1] - 5) % 5)
    assert Task(5, eqn_sign=True).vocab == 6
    assert Task(5, diff_vocab=True).vocab == 10


def test_split_sizes_spec():
    assert n_train(59, 0.8) == 2784  # SPEC §1
    m = train_mask(59, 0.8, 3)
    assert m.dtype == bool and m.shape == (3481,)
    assert m.sum() == 2784 and (~m).sum() == 697


def test_split_reproducible_and_seed_dependent():
    a = train_mask(31, 0.8, 11)
    np.testing.assert_array_equal(a, train_mask(31, 0.8, 11))
    assert not np.array_equal(a, train_mask(31, 0.8, 12))
    # disjoint and covering: train and test partition the p² pairs
    tr, te = np.flatnonzero(a), np.flatnonzero(~a)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 31 * 31


@pytest.mark.parametrize("f", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(f):
    with pytest.raises(ValueError, match="train_fraction"):
        train_mask(7, f, 0)
