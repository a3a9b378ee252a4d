"""umedfast.box_matching: the one box matching behind the ALR reward and the IoU metric."""
import itertools
import random

import pytest

from umedfast.box_matching import best_matching, iou_matrix


def test_best_matching_equals_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        p, g = rng.randint(0, 5), rng.randint(0, 5)
        m = [[rng.random() if rng.random() > 0.3 else 0.0 for _ in range(g)] for _ in range(p)]
        total, pairs = best_matching(m)
        brute = 0.0
        if p and g:
            for perm in itertools.permutations(range(p), min(p, g)):
                # perm[k] = prediction assigned to GT k (for the first min(p,g) GT) ... try all GT subsets too
                for gts in itertools.permutations(range(g), min(p, g)):
                    brute = max(brute, sum(m[i][j] for i, j in zip(perm, gts)))
        assert total == pytest.approx(brute, abs=1e-9)
        assert sum(v for _, _, v in pairs) == pytest.approx(total, abs=1e-9)
        assert len({i for i, _, _ in pairs}) == len(pairs) == len({j for _, j, _ in pairs})


def test_iou_matrix_degenerate_boxes_are_zero():
    m = iou_matrix([(0.5, 0.5, 0.5, 0.9), (0.0, 0.0, 1.0, 1.0)], [(0.0, 0.0, 1.0, 1.0)])
    assert m[0][0] == 0.0 and m[1][0] == pytest.approx(1.0)


def _brute(m):
    p, g = len(m), len(m[0]) if m else 0
    if not (p and g):
        return 0.0
    if p <= g:
        return max(sum(m[i][j] for i, j in enumerate(cols)) for cols in itertools.permutations(range(g), p))
    return max(sum(m[i][j] for j, i in enumerate(rows)) for rows in itertools.permutations(range(p), g))


@pytest.mark.parametrize("p,g", [(7, 8), (8, 7), (2, 9), (9, 1)])
def test_exact_beyond_six_boxes_either_side_larger(p, g):
    """Exact for 7-9 boxes too, whichever side is larger (the DP runs over the smaller side); pairs come sorted by
    prediction index, one-to-one, each with its own score."""
    rng = random.Random(p * 31 + g)
    m = [[rng.random() if rng.random() > 0.4 else 0.0 for _ in range(g)] for _ in range(p)]
    total, pairs = best_matching(m)
    assert total == pytest.approx(_brute(m), abs=1e-9)
    assert [i for i, _, _ in pairs] == sorted(i for i, _, _ in pairs)
    assert len({j for _, j, _ in pairs}) == len(pairs) and all(m[i][j] == v > 0 for i, j, v in pairs)


def test_beyond_the_exact_limit_still_one_to_one(monkeypatch):
    import umedfast.box_matching as bm

    monkeypatch.setattr(bm, "EXACT_UP_TO", 2)  # force the greedy path on a 3 x 3 case it gets wrong
    m = [[0.9, 0.8, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.5]]
    total, pairs = bm.best_matching(m)
    assert total == pytest.approx(0.9 + 0.5) and [(i, j) for i, j, _ in pairs] == [(0, 0), (2, 2)]
    monkeypatch.setattr(bm, "EXACT_UP_TO", 16)
    assert bm.best_matching(m)[0] == pytest.approx(0.8 + 0.8 + 0.5)
