"""Tests never reach the network, and loading a model that is not there fails fast, naming it."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request

import huggingface_hub
import pytest

from llm_env import TokenMDPEnv
from llm_env.tokenizer import load_tokenizer
from reward_models import load_reward_model
from reward_models.learned import LearnedRewardModel
from tests.conftest import NetworkBlockedError

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def test_hugging_face_libraries_are_offline():
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # read when it was imported


def socket_connect(address):
    with socket.socket(socket.AF_INET) as s:
        s.settimeout(2)
        s.connect(address)


def socket_connect_ex(address):
    with socket.socket(socket.AF_INET) as s:
        s.settimeout(2)
        return s.connect_ex(address)


def create_connection(address):
    socket.create_connection(address, timeout=2).close()


def urlopen(address):
    urllib.request.urlopen(f"http://{address[0]}:{address[1]}/", timeout=2)


@pytest.mark.parametrize("connect", [socket_connect, socket_connect_ex, create_connection, urlopen])
@pytest.mark.parametrize(
    "address", [("10.255.255.1", 80), ("huggingface.co", 443)], ids=["ip", "host-name"]
)
def test_connections_to_other_machines_are_blocked_at_once(connect, address):
    start = time.monotonic()
    with pytest.raises(NetworkBlockedError, match=re.escape(f"connection to {address!r}")):
        connect(address)
    assert time.monotonic() - start < 0.5  # no connection attempt, no DNS lookup


def test_an_ipv6_address_is_blocked():
    with pytest.raises(NetworkBlockedError, match="2001:db8::1"):
        create_connection(("2001:db8::1", 80))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_still_works(host):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        create_connection((host, port))
        assert socket_connect_ex(("127.0.0.1", port)) == 0


def test_unix_sockets_still_work(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


@pytest.fixture
def connection_attempts(monkeypatch):
    """Every connect or DNS lookup tried in this process, recorded and refused."""
    attempts = []

    def refuse(name):
        def record(*args, **kwargs):
            attempts.append((name, args))
            raise NetworkBlockedError(f"{name}{args}")

        return record

    for target, name in [
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
    ]:
        monkeypatch.setattr(target, name, refuse(name))
    return attempts


NOT_THERE = {
    "tokenizer-path": (
        lambda: load_tokenizer("does/not/exist"),
        FileNotFoundError,
        "tokenizer 'does/not/exist' is not a directory",
    ),
    "tokenizer-hub-id": (
        lambda: TokenMDPEnv(**ARITH, tokenizer="gpt2"),
        FileNotFoundError,
        "tokenizer 'gpt2' is not a directory .*never downloads",
    ),
    "reward-model-path": (
        lambda: load_reward_model("does/not/exist"),
        ValueError,
        "unknown reward model 'does/not/exist'",
    ),
    "reward-model-hub-id": (
        lambda: TokenMDPEnv(**ARITH, reward_model="OpenAssistant/reward-model-deberta-v3-base"),
        ValueError,
        "unknown reward model 'OpenAssistant/reward-model-deberta-v3-base'",
    ),
    "gold-reward-model": (
        lambda: TokenMDPEnv(**ARITH, gold_reward_model="does/not/exist"),
        ValueError,
        "unknown reward model 'does/not/exist'",
    ),
    "learned-reward-model": (
        lambda: LearnedRewardModel.from_pretrained("nope"),
        FileNotFoundError,
        "'nope' is not a local saved reward-model directory",
    ),
}


@pytest.mark.parametrize("load, error, message", NOT_THERE.values(), ids=NOT_THERE.keys())
def test_a_model_that_is_not_there_fails_fast_naming_it(load, error, message, connection_attempts):
    with pytest.raises(error, match=message):
        load()
    assert connection_attempts == []


def test_a_directory_without_a_saved_tokenizer(tmp_path, connection_attempts):
    with pytest.raises(FileNotFoundError, match=f"tokenizer '{tmp_path}' has no tokenizer_config"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"tokenizer '{tmp_path}' has no tokenizer_config"):
        TokenMDPEnv(**ARITH, tokenizer=str(tmp_path))
    assert connection_attempts == []


def test_entry_points_put_the_hugging_face_libraries_offline():
    """In a fresh process whose environment allows the network, ``import scripts`` (every
    command and benchmark imports it) turns the hub offline even after ``huggingface_hub`` was
    imported, so TRL's trainers send no telemetry (no telemetry thread is started)."""
    import subprocess
    import sys

    code = (
        "import huggingface_hub.constants as c, huggingface_hub.utils._telemetry as t\n"
        "assert not c.HF_HUB_OFFLINE\n"
        "import scripts, os\n"
        "from huggingface_hub.utils import send_telemetry\n"
        "send_telemetry('tokenmdp-test')\n"
        "print(c.is_offline_mode(), c.HF_HUB_DISABLE_TELEMETRY, t._TELEMETRY_THREAD,"
        " os.environ['TRANSFORMERS_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "None", "1", "1"]
