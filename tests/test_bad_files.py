"""Bad prompt and data files fail when they are read, naming the file and the line."""

from __future__ import annotations

import pytest

from llm_env import TokenMDPEnv
from llm_env.tasks import JsonlError, Task, make_task, read_jsonl


@pytest.mark.parametrize(
    "content, line, byte",
    [
        (b'{"prompt": "caf\xe9"}\n', 1, "0xe9"),  # Latin-1, not UTF-8
        (b'{"prompt": "a"}\n\n{"prompt": "b\xff"}\n', 3, "0xff"),
        (b'{"prompt": "a"}\r\n{"prompt": "\xc3"}\r\n', 2, "0xc3"),  # truncated 2-byte sequence
    ],
    ids=["latin-1", "after-a-blank-line", "crlf"],
)
def test_non_utf8_jsonl_names_file_line_and_byte(tmp_path, content, line, byte):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    message = f"{path}:{line}: not valid UTF-8 \\(byte {byte}\\)"
    with pytest.raises(JsonlError, match=message):
        read_jsonl(path, ["prompt"])
    with pytest.raises(JsonlError, match=message):
        make_task("jsonl", path=str(path))


def test_non_utf8_eval_file_names_the_eval_file(tmp_path):
    train, heldout = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text('{"prompt": "1+2="}\n')
    heldout.write_bytes(b'{"prompt": "1+1="}\n{"prompt": "\x80"}\n')
    with pytest.raises(JsonlError, match=f"{heldout}:2: not valid UTF-8"):
        make_task("jsonl", path=str(train), eval_path=str(heldout))


def test_utf8_text_and_line_endings_still_read(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes('{"prompt": "café ☕"}\r\n\n{"prompt": "b"}'.encode())
    assert [r["prompt"] for r in read_jsonl(path, ["prompt"])] == ["café ☕", "b"]


@pytest.mark.parametrize("prompt", ["", " ", "\\t\\n  "])
def test_blank_prompt_is_rejected_when_the_env_is_built(tmp_path, prompt, arithmetic_tokenizer):
    path = tmp_path / "prompts.jsonl"
    path.write_text(f'{{"prompt": "1+2="}}\n{{"prompt": "{prompt}"}}\n')
    with pytest.raises(JsonlError, match=f"{path}:2: key 'prompt' is blank"):
        TokenMDPEnv(task="jsonl", task_kwargs={"path": str(path)},
                    tokenizer=arithmetic_tokenizer, reward_model="arithmetic")  # fmt: skip


def test_blank_strings_are_allowed_where_not_asked_for(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "1+2=", "completion": ""}\n')
    assert read_jsonl(path, ["prompt", "completion"], nonblank=["prompt"])[0]["completion"] == ""
    with pytest.raises(JsonlError, match=f"{path}:1: key 'completion' is blank"):
        read_jsonl(path, ["prompt", "completion"], nonblank=["completion"])


@pytest.mark.parametrize(
    "train, heldout, message",
    [
        (("a", " "), (), r"train prompt #1 is ' '"),
        (("a",), ("b", ""), r"eval prompt #1 is ''"),
        (("a", None), (), r"train prompt #1 is None"),
    ],
)
def test_task_object_with_a_blank_prompt(train, heldout, message):
    with pytest.raises(ValueError, match=f"task 'mine': {message}; every prompt must be"):
        Task("mine", train, heldout, (), None, max_new_tokens=4, max_prompt_tokens=4)
