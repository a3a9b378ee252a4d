"""AAR rewards of real responses on a real tiny LLaVA: the reference answers score perfectly on ALR and the rubric,
VRR is read through the kernel only where the class is written, and group normalization holds."""
import pytest
import torch

from umedfast.config import RewardsConfig
from umedfast.data import synth
from umedfast.model import TinySizes, load_vlm
from umedfast.rewards.judge import RubricJudge
from umedfast.train.rollout_rewards import class_token_mask, score_rollout
from umedfast.train.rollout import rollout_from_texts


NORMAL = {}  # a normal-image record of the same synthetic set (filled by the fixture)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    recs = synth.generate(12, tmp_path_factory.mktemp("synth"), seed=1, image_size=64, style="compact",
                          progress=False)
    abnormal = [r for r in recs if r.findings][:2]
    bundle = load_vlm("tiny-llava", tiny=TinySizes(text_layers=1, text_hidden=64))
    NORMAL["record"] = next(r for r in recs if not r.findings)
    return abnormal, bundle


def test_reference_answers_vs_wrong_answers(setup):
    recs, bundle = setup
    k = 2
    reps = [r for r in recs for _ in range(k)]
    # candidate 0 = the reference answer; candidate 1 = no class, no box
    texts = [t for r in recs for t in (r.response, "Detection: nothing. Recognition: unclear.")]
    ro = rollout_from_texts(bundle, reps, texts)
    assert ro.texts[0] == recs[0].response
    rw = score_rollout(bundle, ro, RubricJudge(), RewardsConfig(vrr_layers=[0]), k)
    assert rw.alr[0::2].tolist() == pytest.approx([1.0, 1.0], abs=0.02)  # norm1000 rounding only
    assert rw.alr[1::2].tolist() == [0.0, 0.0] and not rw.format_ok[1::2].any()
    assert rw.r_llm[0::2].tolist() == [1.0, 1.0]
    assert rw.class_written.tolist() == [True, False, True, False]
    assert (rw.vrr[0::2] > 0).all() and (rw.vrr[1::2] == 0).all()
    # per group: the reference gets 1 + 1 + 1 (it is the max of its group for ALR and VRR), the other only r_llm
    assert rw.combined.total[0::2].tolist() == pytest.approx([3.0, 3.0], abs=1e-5)
    assert rw.combined.total[1::2].tolist() == pytest.approx(rw.r_llm[1::2].tolist())
    # class tokens are inside the response, after the prompt
    cm = class_token_mask(bundle, ro, [[f["label"] for f in r.findings] for r in reps])
    assert cm[:, :ro.prompt_width].sum() == 0 and cm[0].sum() > 0


def test_ablation_weights_skip_work(setup):
    recs, bundle = setup
    ro = rollout_from_texts(bundle, recs[:1] * 2, [recs[0].response] * 2)
    rw = score_rollout(bundle, ro, RubricJudge(), RewardsConfig(w_vrr=0.0, w_llm=0.0), 2)
    assert (rw.vrr == 0).all() and (rw.r_llm == 0).all()
    assert rw.combined.total.tolist() == pytest.approx([1.0, 1.0])  # ALR / max only
    assert torch.isfinite(rw.combined.total).all()


@pytest.mark.parametrize("credit", [True, False])
def test_normal_image_reward_parity(setup, credit):
    """A correct "normal" answer earns the full 3 points, like a correct abnormal one (with the credit on)."""
    recs, bundle = setup
    normal = NORMAL["record"]
    wrong = "Detection: one abnormal region. Localization: [100,100,300,300], upper left. Recognition: nodule."
    for text in (normal.response, wrong):  # the reference answer of a normal image says so and writes no box
        assert ("[" in text) == (text is wrong)
    ro = rollout_from_texts(bundle, [normal, normal, recs[0], recs[0]], [normal.response, wrong, recs[0].response,
                                                                          "Detection: unclear."])
    rw = score_rollout(bundle, ro, RubricJudge(), RewardsConfig(vrr_layers=[0], vrr_normal_credit=credit), 2)
    total = rw.combined.total.tolist()
    assert total[2] == pytest.approx(3.0, abs=1e-5)  # correct abnormal answer: 1 + 1 + 1
    assert total[0] == pytest.approx(3.0 if credit else 2.0, abs=1e-5)
    assert total[1] < 0.5  # a box on a normal image earns nothing
    assert rw.vrr[:2].tolist() == ([1.0, 0.0] if credit else [0.0, 0.0])
