"""``jsonl``: prompts from a user's JSONL file (``{"prompt": ...}`` per line), any reward model.

A prompt is a string or, in TRL's conversational format, a list of ``{"role", "content"}``
messages (``{"prompt": [{"role": "user", "content": "..."}]}``), rendered by the env with its
tokenizer's chat template (the env's ``chat_template_kwargs``); a file holds one kind or the other.

``read_jsonl`` is the one JSONL reader of the project: SFT, DPO and reward-model training read
their data through it too, so every malformed row is reported the same way (file, line, key).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from llm_env.chat import check_messages
from llm_env.tasks.base import Task
from llm_env.tokenizer import train_tokenizer


class JsonlError(ValueError):
    """A JSONL file that cannot be used; the message names the file and the line."""


def read_jsonl(
    path: str | Path,
    required: Sequence[str],
    nonblank: Sequence[str] = (),
    messages: Sequence[str] = (),
) -> list[dict]:
    """Rows of ``path``; every row must be an object whose ``required`` keys hold strings, and
    the ``nonblank`` ones (a subset of ``required``) more than whitespace. The ``messages`` keys
    (a subset of ``required``) may instead hold a list of ``{"role", "content"}`` messages
    (TRL's conversational form, checked with ``llm_env.chat.check_messages``; non-blank: some
    message has content), the same kind on every line of the file.

    The file must be UTF-8; blank lines are skipped. Raises ``JsonlError`` naming the file, the
    1-based line number and the missing, mistyped or blank key (or the bad byte); an empty file
    is an error too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise JsonlError(
            f"{path}:{lineno}: not valid UTF-8 (byte {data[e.start]:#04x}); save the file as UTF-8"
        ) from None
    rows = []
    kinds: dict[str, tuple[bool, int]] = {}  # key -> (holds messages, first line)
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonlError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise JsonlError(f"{path}:{lineno}: missing key {key!r} (row has {sorted(row)})")
            if key in messages and isinstance(row[key], list):
                row[key] = _messages(row[key], f"{path}:{lineno}: key {key!r}", key in nonblank)
            elif not isinstance(row[key], str):
                kind = "a string or a list of messages" if key in messages else "a string"
                raise JsonlError(
                    f"{path}:{lineno}: key {key!r} must be {kind}, got {type(row[key]).__name__}"
                )
            elif key in nonblank and not row[key].strip():
                raise JsonlError(f"{path}:{lineno}: key {key!r} is blank ({row[key]!r})")
            if key in messages:
                is_list, first = kinds.setdefault(key, (isinstance(row[key], list), lineno))
                if is_list != isinstance(row[key], list):
                    kind = "a message list" if is_list else "a string"
                    raise JsonlError(
                        f"{path}:{lineno}: key {key!r} is {type(row[key]).__name__} but line "
                        f"{first} holds {kind}: a file may not mix plain and conversational rows"
                    )
        rows.append(row)
    if not rows:
        raise JsonlError(f"{path}: no rows (the file is empty)")
    return rows


def _messages(value: list, where: str, nonblank: bool) -> list[dict[str, str]]:
    try:
        messages = check_messages(value, where)
    except ValueError as e:
        raise JsonlError(str(e)) from None
    if nonblank and not any(m["content"].strip() for m in messages):
        raise JsonlError(f"{where}: every message is blank ({value!r})")
    return messages


def make_jsonl_task(
    path: str | Path,
    eval_path: str | Path | None = None,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 64,
    corpus: str | Path | None = None,
    gold_reward: str | None = None,
    vocab_size: int = 1024,
) -> Task:
    """Prompts from ``path`` (eval prompts from ``eval_path``, else the same prompts).

    A prompt is a string or a list of messages (conversational: the task keeps them in
    ``train_messages`` / ``eval_messages``; the env renders them with its tokenizer's chat
    template). A blank prompt, a malformed message or a file mixing both kinds is an error
    naming its file and line. Plain rows that also carry a string ``"completion"`` become
    demonstrations for SFT. ``corpus`` (a JSONL file of ``{"text": ...}`` lines) makes the task
    self-contained, like the built-in ones: its texts (with the prompts) train the task's BPE
    tokenizer (``vocab_size``) and are demonstrations with an empty prompt, so a tiny policy is
    pre-trained on them. ``gold_reward`` is the task's gold reward spec (a
    registered name, a saved reward-model directory, ``module:callable``). Without ``corpus``
    the task has no tokenizer of its own: pass ``tokenizer=`` to the env.
    """
    rows = _prompt_rows(path)
    eval_rows = _prompt_rows(eval_path) if eval_path else []
    texts = (
        [r["text"] for r in read_jsonl(corpus, required=["text"], nonblank=["text"])]
        if corpus
        else []
    )
    demonstrations = [
        (r["prompt"], r["completion"])
        for r in rows
        if isinstance(r["prompt"], str) and isinstance(r.get("completion"), str)
    ]
    prompts = [_text(r["prompt"]) for r in rows]
    return Task(
        name="jsonl",
        train_prompts=tuple(prompts),
        eval_prompts=tuple(_text(r["prompt"]) for r in eval_rows),
        demonstrations=tuple(demonstrations + [("", text) for text in texts]),
        gold_reward=gold_reward,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        make_tokenizer=(lambda: train_tokenizer(texts + prompts, vocab_size)) if texts else None,
        train_messages=_conversations(rows),
        eval_messages=_conversations(eval_rows),
    )


def _prompt_rows(path: str | Path) -> list[dict]:
    return read_jsonl(path, required=["prompt"], nonblank=["prompt"], messages=["prompt"])


def _text(prompt: str | list[dict[str, str]]) -> str:
    """A plain prompt as is; a conversation's contents, one message per line (its words)."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def _conversations(rows: list[dict]) -> tuple[list[dict[str, str]], ...] | None:
    """The rows' message lists; None for plain rows (a file holds one kind only)."""
    if not rows or isinstance(rows[0]["prompt"], str):
        return None
    return tuple(r["prompt"] for r in rows)
