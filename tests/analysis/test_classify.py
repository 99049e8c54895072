"""The one classifier: labels, algorithm classes and the networks left out of the phase diagram."""

import numpy as np

from phasespace.analysis import classify
from phasespace.defaults import ALGORITHMS
from phasespace.phase import diagram


def _row(circ, gs, di, **kw):
    return {"circularity": circ, "gradient_symmetricity": gs, "distance_irrelevance": di, **kw}


def test_classify_rows_uses_the_given_thresholds_and_never_calls_collapsed_or_diverged_clock_or_pizza():
    rows = [
        _row(0.9944, 0.99, 0.2),  # circular only under a 0.99 threshold: pizza there
        _row(0.999, 0.30, 0.9),  # clock
        _row(0.999, 0.99, 0.2, collapsed=True),  # pizza-like metrics, but collapsed
        _row(0.999, 1.00, 0.2, nonfinite_step=8.0),  # frozen after a non-finite update
        _row(0.999, 0.99, 0.9, nonfinite_step=np.nan),  # mixed; NaN step = never diverged
    ]
    classify.classify_rows(rows, {})
    assert [r["algorithm"] for r in rows] == ["non-circular", "clock", "collapsed", "diverged", "mixed"]
    assert [r["circular"] for r in rows] == [False, True, True, True, True]
    assert [r["algorithm_code"] for r in rows] == [ALGORITHMS.index(r["algorithm"]) for r in rows]
    classify.classify_rows(rows, {"circular_threshold": 0.99})
    assert rows[0]["algorithm"] == "pizza" and rows[0]["circular"] is True


def test_left_out_networks_are_counted_per_cell_and_out_of_every_statistic():
    runs = {
        "d_model": np.full(6, 32.0),
        "attention_rate": np.asarray([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        "circularity": np.ones(6),
        "gradient_symmetricity": np.asarray([0.99, 0.99, 0.10, 0.10, 0.10, 0.99]),
        "collapsed": np.asarray([False, False, True, False, False, False]),
        "nonfinite_step": np.asarray([np.nan, np.nan, np.nan, np.nan, np.nan, 7.0]),
    }
    assert classify.left_out(runs).tolist() == [False, False, True, False, False, True]
    arr = diagram.phase_arrays(runs, {"alpha_bins": "distinct"})
    assert arr["binned__left_out__count"].tolist() == [[[1, 1]]]
    assert arr["binned__all__gradient_symmetricity__count"].tolist() == [[[2, 2]]]
    # the symmetric fraction without them: 1 at α = 0, 0 at α = 1 (with them: 2/3 and 1/3)
    np.testing.assert_array_equal(arr["binned__all__symmetric__mean"], [[[1.0, 0.0]]])
    assert arr["transition__all__symmetric__n"].tolist() == [[4]]
    # tables without the training record (the published ones) leave nothing out
    plain = {k: v for k, v in runs.items() if k not in ("collapsed", "nonfinite_step")}
    assert not classify.left_out(plain).any()
