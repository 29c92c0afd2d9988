"""Tokenizers for the built-in tasks: real ``PreTrainedTokenizerFast`` objects trained here.

A task's tokenizer is a byte-pair-encoding model trained with the ``tokenizers`` library on the
task's own corpus, with a Metaspace pre-tokenizer so decoding restores spaces exactly
(``decode(encode(text)) == text`` for text made of known characters). Special tokens are
``<pad>`` (id 0), ``<eos>`` (id 1) and ``<unk>`` (id 2): pad and EOS are distinct.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
    """Fail early, naming what is missing, if the tokenizer cannot drive a token MDP."""
    name = type(tokenizer).__name__
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {name} has no EOS token: the token MDP ends an episode on EOS; "
            "set tokenizer.eos_token before building the environment"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"tokenizer {name} has no pad token: observations are padded to a fixed length; "
            "set tokenizer.pad_token (e.g. add a '<pad>' special token) before building the "
            "environment"
        )
