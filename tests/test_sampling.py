"""Sampling: the truncated/tempered distribution is what the sampler draws and what log-probs
describe."""

from __future__ import annotations

import math

import pytest
import torch

from agents.models.policy import SamplingConfig, process_logits
from agents.sampling.rollout import sample_tokens

LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0])


def test_process_logits_by_hand():
    # temperature 2 → logits / 2; top_k=2 keeps ids 4 and 0
    out = process_logits(LOGITS[None], SamplingConfig(temperature=2.0, top_k=2))[0]
    assert out[4] == 1.5 and out[0] == 1.0 and torch.isinf(out[[1, 2, 3]]).all()
    # top_p: sorted probs of [3, 2, 1, 0, -1] are .636 .234 .086 .032 .012; with p=0.8 the
    # mass before the third token is .870 >= .8, so ids 4 and 0 survive
    out = process_logits(LOGITS[None], SamplingConfig(top_p=0.8))[0]
    assert torch.isfinite(out[[4, 0]]).all() and torch.isinf(out[[1, 2, 3]]).all()


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(temperature=0.5, top_k=3)],
    ids=["plain", "t0.5-k3"],
)
def test_sampler_frequencies_match_the_distribution(sampling):
    n = 40_000
    probs = torch.softmax(process_logits(LOGITS[None], sampling), dim=-1)[0]
    tokens, logprobs = sample_tokens(
        LOGITS.expand(n, -1), sampling, torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(tokens, minlength=5).float() / n
    tolerance = 4 * torch.sqrt(probs * (1 - probs) / n) + 1e-9  # 4 standard errors
    assert (freq - probs).abs().le(tolerance).all(), (freq, probs)
    assert (freq[probs == 0] == 0).all()  # truncated tokens are never drawn
    torch.testing.assert_close(logprobs, probs.log()[tokens])
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)
