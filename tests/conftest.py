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
