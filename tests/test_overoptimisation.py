"""Best-of-n estimators and KL, the Gao et al. fits, and the frontier report's reading of them,
against hand-computed numbers and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from scripts.studies.overoptimisation import (
    best_of_n_kl,
    best_of_n_values,
    best_of_n_weights,
    gao_fit,
)
from scripts.studies.report.frontier import (
    decline,
    dominance_lines,
    fit_lines,
    gao_fits,
    interpolate,
    method_points,
    proxy_gold_lines,
)


def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)  # 3.1744
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


def test_best_of_n_kl_matches_the_exact_kl_of_a_fine_discrete_distribution():
    """Exact best-of-n over K equally likely outcomes with distinct rewards: outcome of rank i
    (1-based) is chosen with probability (i/K)^n − ((i−1)/K)^n. Its KL to uniform tends to
    log n − (n−1)/n as K grows (the formula is the continuous limit, an upper bound)."""
    K = 100_000
    i = np.arange(1, K + 1)
    for n in (2, 4, 16, 64):
        p = (i / K) ** n - ((i - 1) / K) ** n
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] * K)))
        assert kl <= best_of_n_kl(n) + 1e-9
        assert kl == pytest.approx(best_of_n_kl(n), abs=2e-3)


def test_best_of_n_weights_by_hand():
    # N = 4, n = 2: the i-th lowest is the best of a random pair with prob C(i-1, 1) / C(4, 2)
    np.testing.assert_allclose(best_of_n_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(best_of_n_weights(3, 3), [0, 0, 1])
    np.testing.assert_allclose(best_of_n_weights(3, 1), [1 / 3] * 3)
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n_weights(3, 4)


def test_best_of_n_values_by_hand_and_by_enumerating_subsets():
    # select ranks the samples 1 < 2 < 3 -> values 20, 30, 10; pairs {0,1}: 10, {0,2}: 10, {1,2}: 30
    assert best_of_n_values(np.array([[3.0, 1.0, 2.0]]), np.array([[10.0, 20, 30]]), 2)[
        0
    ] == pytest.approx(50 / 3)
    rng = np.random.default_rng(0)
    select, value = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    for n in (1, 2, 3, 7):
        brute = [
            np.mean(
                [
                    value[p, max(s, key=lambda j: select[p, j])]
                    for s in itertools.combinations(range(7), n)
                ]
            )  # fmt: skip
            for p in range(5)
        ]
        np.testing.assert_allclose(best_of_n_values(select, value, n), brute, rtol=1e-12)


def test_best_of_n_values_break_ties_pessimistically():
    # two samples tie on the selector; the tie counts the lower value first
    got = best_of_n_values(np.array([[1.0, 1.0]]), np.array([[5.0, 1.0]]), 1)
    assert got[0] == pytest.approx(3.0)  # n = 1 is the plain mean whatever the order
    got = best_of_n_values(np.array([[1.0, 1.0]]), np.array([[5.0, 1.0]]), 2)
    assert got[0] == pytest.approx(5.0)  # the higher value ranks last among ties


@pytest.mark.parametrize(("form", "alpha", "beta", "peak_d"), [
    ("bon", 1.0, 0.25, 2.0),  # d(α − βd) peaks at α / 2β
    ("rl", 1.0, 0.5, math.e),  # d(α − β log d) peaks at exp(α/β − 1)
])  # fmt: skip
def test_gao_fit_recovers_the_law_it_was_drawn_from(form, alpha, beta, peak_d):
    d = np.linspace(0.2, 4.0, 9)
    shape = d if form == "bon" else np.log(d)
    gain = d * (alpha - beta * shape)
    fit = gao_fit(d**2, gain, form)
    assert (fit.alpha, fit.beta) == (pytest.approx(alpha), pytest.approx(beta))
    assert fit.rmse == pytest.approx(0.0, abs=1e-9) and fit.points == 9
    assert fit.peak_d == pytest.approx(peak_d)
    grid = np.linspace(0.01, 6, 6000)
    assert grid[np.argmax(fit(grid))] == pytest.approx(peak_d, abs=2e-3)
    assert fit.as_dict()["peak_kl"] == pytest.approx(peak_d**2)


def test_gao_fit_needs_two_points_with_positive_kl():
    with pytest.raises(ValueError, match="two points with KL > 0"):
        gao_fit(np.array([0.0, -0.1, 1.0]), np.array([0.0, 0.0, 0.3]), "rl")
    with pytest.raises(ValueError, match="form must be one of"):
        gao_fit(np.array([1.0, 2.0]), np.array([0.1, 0.2]), "linear")


def ev(name, gold, kl, learned=None, half_width=0.02):
    e = {"name": name, "gold_reward": gold, "gold_ci": [gold - half_width, gold + half_width],
         "kl_ref": kl}  # fmt: skip
    return e | ({"learned_reward": learned} if learned is not None else {})


EVALS = [
    ev("sft", 0.0, 0.0),
    ev("ppo-beta0.3", 0.5, 1.0, learned=1.0),
    ev("ppo-beta0.03", 0.6, 9.0, learned=2.0),
    ev("ppo-beta0.1", 0.7, 4.0, learned=1.5),
    ev("dpo-beta0.1", 0.4, 3.0, learned=0.9),
    ev("dpo", 0.45, 5.0),
]


def test_method_points_group_by_method_and_sort_by_kl():
    groups = method_points(EVALS)
    assert list(groups) == ["ppo", "dpo"]
    assert [p["beta"] for p in groups["ppo"]] == [0.3, 0.1, 0.03]
    assert [p["kl_ref"] for p in groups["dpo"]] == [3.0, 5.0]
    assert math.isnan(groups["dpo"][1]["beta"])  # a run without a β in its name


def test_interpolate_inside_and_outside_the_range():
    points = [(1.0, 0.5), (4.0, 0.7), (9.0, 0.6)]
    assert interpolate(points, 2.5) == pytest.approx(0.6)
    assert interpolate(points, 6.5) == pytest.approx(0.65)
    assert math.isnan(interpolate(points, 0.5)) and math.isnan(interpolate(points, 10.0))


def test_dominance_lines_name_the_curves_above_and_below_each_point():
    bon = {"curves": {"learned": [{"kl": 0.0, "gold_reward": 0.0, "gold_ci": [0, 0]},
                                  {"kl": 4.0, "gold_reward": 0.8, "gold_ci": [0.8, 0.8]}]}}  # fmt: skip
    lines = dominance_lines(method_points(EVALS), bon)
    dpo = next(line for line in lines if line.startswith("- **dpo** β=0.1"))
    # at KL 3: ppo's frontier 0.5 + (0.7 − 0.5)·2/3 = 0.633 and best-of-n 0.6 pass above 0.42
    assert "below the frontier of ppo (0.633), best-of-n (learned reward) (0.600)" in dpo
    ppo_tight = next(line for line in lines if line.startswith("- **ppo** β=0.3"))
    assert "above best-of-n (learned reward) (0.200)" in ppo_tight  # 0.8·1/4 below 0.48


def test_proxy_gold_lines_flag_the_proxy_rising_while_gold_falls():
    lines = proxy_gold_lines(method_points(EVALS), None)
    assert lines == ["- **ppo**: from β=0.1 to β=0.03 (KL 4.00 → 9.00) the learned reward rose "
                     "1.500 → 2.000 while the gold fell 0.700 → 0.600 (beyond the intervals)."]  # fmt: skip
    calm = proxy_gold_lines(method_points(EVALS[:2]), None)
    assert calm == ["- Nowhere in this study did the learned reward rise while the gold fell."]
    bon = {"curves": {"learned": [{"n": 1, "selector_value": 0.1, "gold_reward": 0.3},
                                  {"n": 2, "selector_value": 0.4, "gold_reward": 0.2}]}}  # fmt: skip
    assert (
        "n 1 → 2 raised the learned reward 0.100 → 0.400 while the gold fell"
        in (proxy_gold_lines({}, bon)[0])
    )


def test_gao_fits_use_the_gain_over_sft_and_the_rl_form_for_methods():
    fits = gao_fits(method_points(EVALS), None, sft_gold=0.0)
    d = np.sqrt([1.0, 4.0, 9.0])
    design = np.stack([d, -d * np.log(d)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, np.array([0.5, 0.7, 0.6]), rcond=None)
    assert fits["ppo"].form == "rl"
    assert (fits["ppo"].alpha, fits["ppo"].beta) == (pytest.approx(alpha), pytest.approx(beta))
    assert fits["dpo"].points == 2
    shifted = gao_fits(method_points(EVALS), None, sft_gold=0.1)["ppo"]
    assert shifted.alpha != pytest.approx(alpha)  # the gain, not the raw gold, is fitted


def test_decline_needs_a_later_point_below_the_best_points_interval():
    points = [(1.0, 0.5, [0.48, 0.52]), (4.0, 0.7, [0.68, 0.72]), (9.0, 0.69, [0.66, 0.72])]
    assert decline(points) is None  # 0.69's interval reaches the best's
    points.append((16.0, 0.6, [0.58, 0.62]))
    assert decline(points) == "0.700 at KL 4.00 → 0.600 at KL 16.00"


def test_fit_lines_tell_a_measured_fall_from_a_flattening_fit():
    # a saturating curve: the fitted peak is inside the range but the gold never fell
    kl = np.array([1.0, 4.0, 9.0, 16.0])
    flat = [(k, g, [g - 0.01, g + 0.01]) for k, g in zip(kl, [0.5, 0.8, 0.9, 0.92])]
    fit = gao_fit(kl, np.array([p[1] for p in flat]), "bon")
    assert fit.peak_d**2 < 16.0
    text = fit_lines({"flat": fit}, {"flat": flat})[-1]
    assert "inside the measured range" in text and "no over-optimisation observed" in text
    falling = flat[:3] + [(16.0, 0.6, [0.58, 0.62])]
    fit = gao_fit(kl, np.array([p[1] for p in falling]), "rl")
    text = fit_lines({"falling": fit}, {"falling": falling})[-1]
    assert "the measured gold fell past its best point" in text and "0.900 at KL 9.00" in text


def test_budget_table_takes_each_curves_best_point_within_the_budget():
    from scripts.studies.report.frontier import budget_table

    measured = {"a": [(0.5, 0.2, [0.1, 0.3]), (3.0, 0.6, [0.5, 0.7]), (9.0, 0.4, [0.3, 0.5])],
                "b": [(2.0, 0.5, [0.45, 0.55])]}  # fmt: skip
    lines = budget_table(measured, budgets=(1.0, 4.0, 16.0))
    assert lines[0] == "| KL ≤ | a | b |"
    assert lines[2] == "| 1 | 0.200 [0.100, 0.300] | — |"
    assert lines[3] == "| 4 | 0.600 [0.500, 0.700] | 0.500 [0.450, 0.550] |"
    assert lines[4] == "| 16 | 0.600 [0.500, 0.700] | 0.500 [0.450, 0.550] |"  # 0.4 is worse


def test_paired_gain_ci_cancels_the_prompt_effect_both_policies_share():
    from agents.evaluation import bootstrap_ci, paired_gain_ci

    rng = np.random.default_rng(0)
    prompt_effect = np.repeat(rng.normal(0, 1, 100), 4)  # 100 prompts, 4 samples each
    baseline, policy = prompt_effect, prompt_effect + 0.1
    assert paired_gain_ci(policy, baseline, per_prompt=4) == pytest.approx((0.1, 0.1))
    low, high = bootstrap_ci(policy)  # unpaired: the prompt spread swamps the gain
    assert high - low > 0.15  # ≈ 2 · 1.96 · 1 / √400
    # by hand: per-prompt mean differences are 0.5 and 0.5 whatever the resampling
    assert paired_gain_ci(np.array([1.0, 0, 1, 1]), np.array([0.0, 0, 1, 0]), 2) == (0.5, 0.5)
    with pytest.raises(ValueError):
        paired_gain_ci(np.ones(5), np.ones(5), per_prompt=2)  # not whole prompts


def test_kl_text_for_near_far_and_missing_peaks():
    from scripts.studies.report.frontier import kl_text

    assert (kl_text(2.6912), kl_text(1.1e18), kl_text(math.inf)) == ("2.69", "> 10,000", "never")


def test_gao_fits_skip_curves_too_short_to_fit():
    bon = {"curves": {"gold": [{"n": 1, "kl": 0.0, "gold_reward": 0.1, "gold_ci": [0, 0.2]},
                               {"n": 2, "kl": best_of_n_kl(2), "gold_reward": 0.3,
                                "gold_ci": [0.2, 0.4]}]}}  # fmt: skip
    assert gao_fits(method_points(EVALS[:2]), bon, sft_gold=0.0) == {}  # one KL > 0 point each


def test_training_fits_follow_each_online_run_from_its_first_log_point():
    from pathlib import Path

    from scripts.studies.report.frontier import training_fits
    from scripts.studies.report.runs import AgentRun

    d = np.linspace(0.0, 3.0, 10)
    gold = 0.1 + d * (0.6 - 0.2 * np.log(np.where(d > 0, d, 1.0)))  # the RL law, from gold 0.1
    steps = [64 * (i + 1) for i in range(10)]
    learned = 2 * gold
    scalars = {"kl/ref": list(zip(steps, d**2)), "reward/gold": list(zip(steps, gold)),
               "reward/train": list(zip(steps, learned))}  # fmt: skip
    runs = [AgentRun(Path("ppo-ppo-beta0.1"), "ppo", "ppo-beta0.1", scalars),
            AgentRun(Path("dpo-dpo-beta0.1"), "dpo", "dpo-beta0.1", scalars),  # offline: skipped
            AgentRun(Path("ppo-gold"), "ppo", "gold", scalars)]  # against the gold: skipped  # fmt: skip
    fits, table = training_fits(runs)
    assert list(fits) == ["ppo-ppo-beta0.1"]
    assert (fits["ppo-ppo-beta0.1"].alpha, fits["ppo-ppo-beta0.1"].beta) == (
        pytest.approx(0.6),
        pytest.approx(0.2),
    )
    best = int(np.argmax(gold))
    assert table[2] == (
        f"| ppo-ppo-beta0.1 | 0.600 | 0.200 | 0.000 | 10 | {math.exp(2) ** 2:.2f} | "
        f"{gold[best]:.3f} at KL {d[best] ** 2:.2f} → {gold[-1]:.3f} at KL 9.00 | "
        f"{learned[best]:.3f} → {learned[-1]:.3f} |"
    )
    assert training_fits(runs[1:]) == ({}, [])
