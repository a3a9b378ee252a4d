"""Counter-based sampler (umedfast.train.sampling): bit-exact hash, a correct sampler (chi-square against softmax,
with a negative control that must fail), and PPO rollouts that do not depend on the batch they are generated in."""
import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from umedfast.train.sampling import CounterGumbelSampler, mix64, row_keys, uniforms

M = (1 << 64) - 1


def _splitmix_ref(x: int) -> int:
    """splitmix64 finalizer on Python ints (the published constants)."""
    x &= M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return x ^ (x >> 31)


def test_mix64_matches_reference_bit_for_bit():
    xs = [0, 1, 2, 12345, (1 << 63) - 1, -1, -(1 << 63), 0x9E3779B97F4A7C15 - (1 << 64)]
    got = mix64(torch.tensor(xs, dtype=torch.long)).tolist()
    assert [g & M for g in got] == [_splitmix_ref(x) for x in xs]


def test_uniforms_in_open_interval_and_uniform():
    keys = row_keys(0, 0, [f"q{i}" for i in range(64)], [0] * 64)
    u = uniforms(keys, 3, 4096)
    assert u.shape == (64, 4096) and u.dtype == torch.float32
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    hist = torch.histc(u, bins=16, min=0.0, max=1.0)
    expected = u.numel() / 16
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 45.0, chi2  # 15 dof: p ~ 1e-4


def _draw(logits, n, *, temperature=1.0, top_p=1.0, position=0, step=0):
    """n keyed samples of one categorical (logits Float[V]) -> counts Long[V]."""
    keys = row_keys(7, step, [f"query-{i}" for i in range(n)], [i % 4 for i in range(n)])
    proc = CounterGumbelSampler(keys, prompt_width=5, temperature=temperature, top_p=top_p)
    ids = torch.zeros(n, 5 + position, dtype=torch.long)
    tok = proc(ids, logits.expand(n, -1).clone()).argmax(-1)
    return torch.bincount(tok, minlength=logits.numel()), tok


def _chi2(counts, probs):
    exp = probs * counts.sum()
    keep = exp > 0
    assert int(counts[~keep].sum()) == 0, "a token with probability 0 was sampled"
    return float(((counts[keep] - exp[keep]) ** 2 / exp[keep]).sum())


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
N = 20000
LIMIT = 25.0  # chi-square, 5 dof: P(> 25) ~ 1.4e-4 for a correct sampler


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampler_matches_softmax_chi_square(temperature):
    counts, _ = _draw(LOGITS, N, temperature=temperature)
    assert _chi2(counts, torch.softmax(LOGITS / temperature, -1)) < LIMIT
    # negative control: the same counts against the distribution of the wrong temperature are rejected
    wrong = torch.softmax(LOGITS / (1.5 * temperature), -1)
    assert _chi2(counts, wrong) > 10 * LIMIT


def test_top_p_keeps_the_nucleus_renormalized():
    counts, _ = _draw(LOGITS, N, top_p=0.8)
    warped = TopPLogitsWarper(0.8)(torch.zeros(1, 1, dtype=torch.long), LOGITS[None].clone())[0]
    probs = torch.softmax(warped, -1)
    assert int((probs > 0).sum()) == 3  # 0.52 + 0.19 < 0.8 <= 0.52 + 0.19 + 0.12
    assert _chi2(counts, probs) < LIMIT


def test_positions_and_steps_give_independent_draws():
    _, a = _draw(LOGITS, N, position=0)
    _, b = _draw(LOGITS, N, position=1)
    _, c = _draw(LOGITS, N, position=0, step=1)
    _, a2 = _draw(LOGITS, N, position=0)
    assert torch.equal(a, a2)  # a pure function of the key
    p = torch.softmax(LOGITS, -1)
    same = float((p ** 2).sum())  # P(two independent draws agree)
    for other in (b, c):
        assert abs(float((a == other).float().mean()) - same) < 0.02


def test_rejects_zero_temperature():
    with pytest.raises(ValueError, match="temperature"):
        CounterGumbelSampler(torch.zeros(1, dtype=torch.long), 1, temperature=0.0)


@pytest.fixture(scope="module")
def records():
    import tempfile
    from pathlib import Path

    from umedfast.data import synth

    out = Path(tempfile.mkdtemp(prefix="umedfast_sampling_"))
    return synth.generate(12, out, seed=0, image_size=64, progress=False)[:3]


@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl"])
def test_rollout_independent_of_batch_composition(records, family):
    """Candidates of a query are the same whether it is sampled alone or with others (as on 1 vs 2 ranks)."""
    from umedfast.model import TinySizes, load_vlm
    from umedfast.train.rollout import sample_candidates

    torch.set_num_threads(1)
    bundle = load_vlm(family, tiny=TinySizes(text_layers=1, text_hidden=64))
    kw = dict(k=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=3, step=2)
    together = sample_candidates(bundle, records, **kw)
    texts = {}
    for r in records:  # each query alone: other padding, other batch size
        texts[r.id] = sample_candidates(bundle, [r], **kw).texts
    assert together.texts == [t for r in records for t in texts[r.id]]
    # candidates differ within a query, and another step gives other samples
    assert len(set(together.texts)) > len(records)
    assert sample_candidates(bundle, records, **{**kw, "step": 3}).texts != together.texts
