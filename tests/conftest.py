"""Tiny fixtures shared by the tests: the single-digit arithmetic task and its tokenizer."""

from __future__ import annotations

import pytest
import torch

import llm_env
from llm_env.tasks import make_task

torch.set_num_threads(2)
torch.set_flush_denormal(True)  # denormals make CPU optimiser steps >10x slower


@pytest.fixture(scope="session")
def arithmetic_task():
    return make_task("arithmetic", max_operand=9)


@pytest.fixture(scope="session")
def arithmetic_tokenizer(arithmetic_task):
    return arithmetic_task.tokenizer()


@pytest.fixture
def tiny_policy(arithmetic_tokenizer):
    return llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


@pytest.fixture(scope="session")
def pretrained_arithmetic(arithmetic_task, tmp_path_factory):
    """A tiny GPT-2 pre-trained briefly (150 CE steps) on single-digit sums, saved with its
    tokenizer: right on roughly a quarter of the answers, so RL has room to improve it."""
    from tests.arithmetic_policy import pretrain

    path = tmp_path_factory.mktemp("pretrained-arithmetic")
    pretrain(arithmetic_task, steps=150).save_pretrained(path)
    arithmetic_task.tokenizer().save_pretrained(path)
    return path
