"""Tiny fixtures shared by the tests: the single-digit arithmetic task and its tokenizer.

Tests never use the network: the Hugging Face libraries run offline (set before they are
imported), and ``no_network`` makes a connection to anything but loopback or a Unix socket raise
``NetworkBlockedError`` in this process (subprocesses the tests launch are not patched).
"""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

import llm_env
from llm_env.tasks import make_task

torch.set_num_threads(2)
torch.set_flush_denormal(True)  # denormals make CPU optimiser steps >10x slower


class NetworkBlockedError(RuntimeError):
    """A test tried to connect to another machine (not an OSError, so no library swallows it)."""


def _is_loopback(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reaching it would start with a DNS lookup
        return False


def _check(address) -> None:
    if not _is_loopback(address[0]):
        raise NetworkBlockedError(f"tests must not use the network: connection to {address!r}")


def _guard_connect(connect):
    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return connect(sock, address)

    return guarded


def _guard_create_connection(create_connection):
    def guarded(address, *args, **kwargs):
        _check(address)  # before the DNS lookup
        return create_connection(address, *args, **kwargs)

    return guarded


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests are skipped, saying why, where no CUDA GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_network():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _guard_connect(socket.socket.connect))
        patch.setattr(socket.socket, "connect_ex", _guard_connect(socket.socket.connect_ex))
        patch.setattr(
            socket, "create_connection", _guard_create_connection(socket.create_connection)
        )
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster, and unaffected by a busy machine. A module asks
    for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the count is restored
    after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def chain_task():
    """``arithmetic_chain`` with three single-digit terms: prompts like ``"6+7+9="``."""
    return make_task("arithmetic_chain", num_terms=3, max_operand=9)


@pytest.fixture(scope="session")
def chain_tokenizer(chain_task):
    return chain_task.tokenizer()


@pytest.fixture(scope="session")
def pretrained_llama(tmp_path_factory):
    """A small random Llama saved with a chat tokenizer (pad = EOS, two stop ids, padded
    embedding rows): see ``tests.pretrained``."""
    from tests.pretrained import build_pretrained

    return build_pretrained(tmp_path_factory.mktemp("pretrained-llama"))


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    """TRL conversational JSONL files for ``pretrained_llama``: prompts, SFT rows, pairs."""
    from tests.pretrained import write_chat_data

    return write_chat_data(tmp_path_factory.mktemp("chat-data"))
