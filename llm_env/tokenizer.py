"""Tokenizers for the built-in tasks: real ``PreTrainedTokenizerFast`` objects trained here.

A task's tokenizer is a byte-pair-encoding model trained with the ``tokenizers`` library on the
task's own corpus, with a Metaspace pre-tokenizer so decoding restores spaces exactly
(``decode(encode(text)) == text`` for text made of known characters). Special tokens are
``<pad>`` (id 0), ``<eos>`` (id 1) and ``<unk>`` (id 2): pad and EOS are distinct (a user's
tokenizer may have pad = EOS, or no pad token: ``pad_id``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts``; ``split_digits`` makes every digit its own token."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    pieces = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")]
    if split_digits:
        pieces.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(spec: str | Path | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A tokenizer object, or a local directory saved with ``save_pretrained`` (never a hub id)."""
    if isinstance(spec, PreTrainedTokenizerBase):
        return spec
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {str(spec)!r} is not a directory saved with save_pretrained "
            "(tokenmdp never downloads from a model hub)"
        )
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"tokenizer {str(spec)!r} has no tokenizer_config.json: not a directory saved with "
            "save_pretrained"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Fail early, naming what is missing, if the tokenizer cannot drive a token MDP: it needs
    an EOS token. A pad token is optional (``pad_id`` falls back to EOS)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no EOS token: the token MDP ends an "
            "episode on EOS; set tokenizer.eos_token before building the environment"
        )


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads observations: the pad token's, or EOS's when the tokenizer has none
    (padding is masked out, never compared with, so pad may equal EOS)."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def eos_id_list(value) -> list:
    """A generation config's ``eos_token_id`` (None, an id, or a list of ids) as a list."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def generation_config_stop_ids(directory: str | Path) -> list[int]:
    """``eos_token_id`` (an int or a list) of ``directory/generation_config.json``; [] when the
    file or the entry is absent. Read as plain JSON: no network, no config validation."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None
    values = eos_id_list(value)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{path}: eos_token_id holds {v!r}, not an integer token id")
    return values


def _stop_id(tokenizer: PreTrainedTokenizerBase, vocab: dict[str, int], value, where: str) -> int:
    """One stop token as an id: a token string of the vocabulary (or a text that is exactly one
    token) or an id of the tokenizer; else a ValueError naming it and ``where`` it came from."""
    n = len(tokenizer)
    if isinstance(value, str):
        if value in vocab:
            return vocab[value]
        ids = tokenizer(value, add_special_tokens=False)["input_ids"] if value else []
        if len(ids) == 1:
            return ids[0]
        raise ValueError(
            f"{where}: {value!r} is not a single token of the tokenizer's vocabulary (it "
            f"encodes to {len(ids)} tokens {ids}); give a token string or an id 0..{n - 1}"
        )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {value!r} is neither a token string nor an integer id")
    if not 0 <= value < n:
        raise ValueError(
            f"{where}: token id {int(value)} is outside the tokenizer's vocabulary (ids 0..{n - 1})"
        )
    return int(value)


def resolve_stop_ids(
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path | None = None,
    stop_tokens: Sequence[str | int] | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Every id that ends an episode, EOS first, then the others sorted: the tokenizer's EOS,
    ``directory``'s ``generation_config.json`` ``eos_token_id`` entries (when the tokenizer was
    loaded from a directory), ``stop_tokens`` (token strings or ids) and ``stop_token_ids``."""
    sources = [("stop_tokens", stop_tokens), ("stop_token_ids", stop_token_ids)]
    for where, values in sources:
        if values is not None and (isinstance(values, (str, bytes)) or not np.iterable(values)):
            raise TypeError(f"{where} must be a list, got {values!r}")
    if any(isinstance(v, str) for v in stop_token_ids or ()):
        raise TypeError(f"stop_token_ids must be integer ids, got {list(stop_token_ids)!r}")
    if directory is not None:
        where = f"{directory}/generation_config.json eos_token_id"
        sources.insert(0, (where, generation_config_stop_ids(directory)))
    vocab = tokenizer.get_vocab()
    ids = {_stop_id(tokenizer, vocab, v, where) for where, vs in sources for v in vs or ()}
    eos = tokenizer.eos_token_id
    return (eos, *sorted(ids - {eos}))
