"""The evaluation metrics (``agents.maths.metrics``) against hand-computed values on small fixed
texts; the judge's perplexity against models whose probabilities are known by construction; the
cheap metrics an evaluation point logs under ``eval/``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llm_env
from agents.evaluation import (
    HELDOUT_SUFFIX,
    EvalResult,
    Judge,
    evaluate_policies,
    judge_nll,
    log_evaluation,
    quality_metrics,
)
from agents.maths import metrics
from llm_env.tasks import make_task


def test_distinct_n_pools_ngrams_over_texts():
    texts = ["a b a b", "a c"]  # unigrams a b a b a c: 3 of 6; bigrams ab ba ab ac: 3 of 4
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert math.isnan(metrics.distinct_n(["a", "b"], 2))  # no bigram at all


def test_unique_fraction_counts_exact_repeats():
    assert metrics.unique_fraction(["x y", "x y", "x  y", "z"]) == pytest.approx(3 / 4)
    assert math.isnan(metrics.unique_fraction([]))


def test_self_bleu_against_hand_computed_bleu():
    # two copies score BLEU 1 against each other; "e f g h" shares no word -> BLEU 0
    assert metrics.self_bleu(["a b c d", "a b c d", "e f g h"]) == pytest.approx(2 / 3)
    # one word differs: p1..p3 = 3/4, 2/3, 1/2, p4 = 0/1 smoothed to 0.1/1; no brevity penalty
    expected = (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25
    assert metrics.self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    # the sample is the first max_texts non-empty texts
    texts = ["a b c d", "", "a b c e", "e f g h"]
    assert metrics.self_bleu(texts, max_texts=2) == pytest.approx(expected)
    assert math.isnan(metrics.self_bleu(["a b", ""]))


def test_lexicon_fraction_and_the_built_in_lexicons():
    lexicon = {"good", "film", "."}
    assert metrics.lexicon_fraction(["good film", "gooood film ."], lexicon) == pytest.approx(0.8)
    assert math.isnan(metrics.lexicon_fraction(["", " "], lexicon))
    numbers = metrics.task_lexicon(make_task("arithmetic", max_operand=9))
    assert "12" in numbers and "3+4=" in numbers and "1a" not in numbers and "" not in numbers
    reviews = metrics.task_lexicon(make_task("sentiment"))
    assert {"great", "movie", "boring", ".", ","} <= reviews
    assert "grreat" not in reviews and "moviemovie" not in reviews


def test_perplexity_pools_tokens_over_texts():
    # text 1: two tokens of probability 1/2 and 1/4; text 2: one of 1/8 -> exp(ln 64 / 3) = 4
    nll = np.array([math.log(2) + math.log(4), math.log(8)])
    assert metrics.perplexity(nll, np.array([2, 1])) == pytest.approx(4.0)
    assert math.isnan(metrics.perplexity(np.zeros(2), np.zeros(2)))


def test_eos_rate_and_pearson():
    assert metrics.eos_rate(["eos", "length", "eos", "eos"]) == pytest.approx(0.75)
    assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(math.sqrt(27 / 28))
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 2, 3], [5, 5, 5]))
    assert math.isnan(metrics.pearson([1], [2]))
    with pytest.raises(ValueError, match="lengths 2 and 3"):
        metrics.pearson([1, 2], [1, 2, 3])


@pytest.fixture
def uniform_judge(arithmetic_tokenizer):
    """A tiny GPT-2 whose (tied) output head is zero: every next token has probability 1/V."""
    model = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=16)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return Judge(model.eval(), arithmetic_tokenizer)


def test_uniform_judge_perplexity_is_the_vocabulary_size(uniform_judge, arithmetic_tokenizer):
    prompts, completions, ended = ["1+2=", "3+4=", "9+9="], ["3", "7", "18"], [True, False, True]
    nll, n_tokens = judge_nll(uniform_judge.model, uniform_judge.tokenizer, prompts, completions,
                              ended)  # fmt: skip
    assert n_tokens.tolist() == [2, 1, 3]  # the completion's tokens, plus EOS where it ended
    vocab = len(arithmetic_tokenizer)
    assert nll == pytest.approx(n_tokens * math.log(vocab), rel=1e-5)
    assert metrics.perplexity(nll, n_tokens) == pytest.approx(vocab, rel=1e-5)


class LogitTable(torch.nn.Module):
    """A language model whose next-token logits are ``table[previous token]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.config = SimpleNamespace(model_type="logit-table")

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def test_judge_scores_the_completion_given_its_prompt(arithmetic_tokenizer):
    tok = arithmetic_tokenizer
    vocab, eos = len(tok), tok.eos_token_id
    (equals,), (three,) = tok.convert_tokens_to_ids(["="]), tok.convert_tokens_to_ids(["3"])
    table = torch.zeros(vocab, vocab)  # uniform, except: p(3 | =) = 1/2 and p(EOS | 3) = 1/4
    table[equals, three] = math.log(vocab - 1)
    table[three, eos] = math.log((vocab - 1) / 3)
    judge = LogitTable(table)
    nll, n_tokens = judge_nll(judge, tok, ["1+2=", "1+2="], ["3", "3"], [True, False])
    assert nll == pytest.approx([math.log(2) + math.log(4), math.log(2)], rel=1e-5)
    assert metrics.perplexity(nll[:1], n_tokens[:1]) == pytest.approx(math.sqrt(8), rel=1e-5)


def eval_result(completions, finish_reasons, lengths, rewards) -> EvalResult:
    n = len(completions)
    return EvalResult(
        gold_rewards=np.asarray(rewards, dtype=np.float32),
        train_rewards=np.asarray(rewards, dtype=np.float32),
        kls=np.zeros(n),
        lengths=np.asarray(lengths, dtype=np.float32),
        prompts=["1+2="] * n,
        completions=list(completions),
        finish_reasons=list(finish_reasons),
    )


def test_an_evaluation_point_logs_the_cheap_metrics_under_eval():
    result = eval_result(["a b", "a b", "c"], ["eos", "eos", "length"], [3, 3, 1], [1, 1, 0])
    summary = result.summary()
    assert summary["eval/distinct_1"] == pytest.approx(3 / 5)  # a b a b c
    assert summary["eval/distinct_2"] == pytest.approx(1 / 2)  # ab ab
    assert summary["eval/unique_fraction"] == pytest.approx(2 / 3)
    assert summary["eval/eos_rate"] == pytest.approx(2 / 3)
    assert summary["eval/length_reward_corr"] == pytest.approx(1.0)
    constant = eval_result(["a", "b"], ["eos", "eos"], [2, 2], [0, 1]).summary()
    assert "eval/length_reward_corr" not in constant  # undefined: not logged as a number


def test_quality_metrics_of_fixed_completions(uniform_judge):
    result = eval_result(["3", "3", "1x"], ["eos", "eos", "length"], [2, 2, 2], [1.0, 1.0, 0.0])
    quality = quality_metrics(result, uniform_judge, metrics.CharacterLexicon("0123456789"))
    assert quality["lexicon_fraction"] == pytest.approx(2 / 3)
    assert quality["unique_fraction"] == pytest.approx(2 / 3)
    assert quality["judge_ppl"] == pytest.approx(len(uniform_judge.tokenizer), rel=1e-5)
    assert math.isnan(quality["length_corr_gold"])  # every length is 2
    assert "length_reward_corr" not in quality
    no_judge = quality_metrics(result)
    assert math.isnan(no_judge["judge_ppl"]) and math.isnan(no_judge["lexicon_fraction"])


def test_suite_gives_every_policy_the_same_prompts_and_seed(
    tiny_policy, arithmetic_tokenizer, tmp_path
):
    from agents.evaluation import SuiteConfig

    tiny_policy.save_pretrained(tmp_path)
    arithmetic_tokenizer.save_pretrained(tmp_path)
    suite = SuiteConfig(task="arithmetic", task_kwargs={"max_operand": 9}, prompts=6, num_envs=4)
    evals = evaluate_policies([("a", tmp_path), ("b", tmp_path)], tmp_path, suite)
    assert [e["name"] for e in evals] == ["a", "b"]
    a, b = evals
    assert a["samples"] == b["samples"] and a["n"] == 6
    assert a["kl_ref"] == pytest.approx(0.0, abs=1e-5)
    assert a["distinct_1"] == b["distinct_1"] and 0 <= a["lexicon_fraction"] <= 1
    with pytest.raises(ValueError, match="prompts must be an integer >= 1, got 0"):
        SuiteConfig(prompts=0)


def test_log_evaluation_writes_eval_scalars_at_the_runs_last_step(tmp_path):
    from scripts.studies.report.runs import read_scalars

    (tmp_path / "metrics.jsonl").write_text('{"examples": 32}\n{"examples": 64}\n')
    log_evaluation(tmp_path, {"distinct_2": 0.5, "judge_ppl": math.nan, "length_corr_gold": 0.2})
    log_evaluation(tmp_path, {"distinct_2": 0.25, "judge_ppl": 7.0, "length_corr_gold": 0.3})
    assert len(list(tmp_path.glob(f"*{HELDOUT_SUFFIX}"))) == 1  # the earlier one was replaced
    scalars, _ = read_scalars(tmp_path)
    assert scalars["eval/distinct_2"] == [(64, 0.25)]
    assert scalars["eval/judge_ppl"] == [(64, 7.0)]
    assert scalars["eval/length_reward_corr"] == [(64, pytest.approx(0.3))]


def test_pass_at_k_by_hand():
    from agents.maths.metrics import pass_at_k

    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=bool)
    # n = 4: c = 1 → pass@1 = 1/4, pass@2 = 1 − C(3,2)/C(4,2) = 1/2; c = 2 → pass@2 = 1 − 1/6
    assert pass_at_k(correct, 1) == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert pass_at_k(correct, 2) == pytest.approx((0.5 + 0 + 5 / 6) / 3)
    assert pass_at_k(correct, 4) == pytest.approx(2 / 3)  # any correct
    with pytest.raises(ValueError, match="k=5, n=4"):
        pass_at_k(correct, 5)
