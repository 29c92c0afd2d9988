"""The offline agents on a pretrained-shaped checkpoint (``pretrained_llama``: pad = EOS =
``<|im_end|>``, a second stop id, padded embedding rows) and TRL's conversational rows: the
chat-template rendering, masks from lengths with the end-of-turn token scored, log-probs over the
tokenizer's vocabulary only, training that moves the loss, and bad rows named by file and line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.data.offline import pad_batch, sequence_logprobs
from agents.dpo import DPO, DPOConfig
from agents.harness.config import OptimConfig
from agents.prm import PRMConfig, PRMTrainer
from agents.reward_model import RewardModelConfig, RewardModelTrainer
from agents.sft import SFT, SFTConfig
from llm_env.tasks import JsonlError

pytestmark = pytest.mark.usefixtures("one_thread")

IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok(pretrained_llama):
    return AutoTokenizer.from_pretrained(pretrained_llama)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def chat_ids(tok, messages, generation_prompt: bool = False) -> list[int]:
    return list(
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)[
            "input_ids"
        ]
    )


def sft_config(**overrides) -> SFTConfig:
    base = dict(
        batch_size=12, max_steps=6, max_length=64, heldout_fraction=0.0, log_every=1,
        save_every=0,
    )  # fmt: skip
    return SFTConfig(**{**base, **overrides}, optim=OptimConfig(learning_rate=1e-2))


def test_the_fixture_has_what_real_checkpoints_have(pretrained_llama, tok):
    model = AutoModelForCausalLM.from_pretrained(pretrained_llama)
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids(IM_END)
    assert model.get_input_embeddings().num_embeddings > len(tok)
    assert len(model.generation_config.eos_token_id) == 2


def test_sft_conversational_rows_are_the_chat_template_with_the_completion_scored(
    pretrained_llama, chat_data, tok, tmp_path
):
    sft = SFT(pretrained_llama, None, chat_data["sft"], sft_config(), tmp_path / "run")
    rows = read_rows(chat_data["sft"])
    expected = sorted(
        (chat_ids(tok, r["prompt"] + r["completion"]), len(chat_ids(tok, r["prompt"], True)))
        for r in rows
    )
    assert sorted(sft.train_rows) == expected
    im_end = tok.convert_tokens_to_ids(IM_END)
    batch = sft.batch(sft.train_rows)
    for i, (ids, n_prompt) in enumerate(sft.train_rows):
        scored = batch["input_ids"][i, 1:][batch["loss_mask"][i].bool()].tolist()
        # exactly the completion: answer, <|im_end|>, "\n" — no prompt token, no padding
        assert scored == ids[n_prompt:] and scored[-2] == im_end and len(scored) >= 3
        assert batch["attention_mask"][i].sum().item() == len(ids)
        assert batch["loss_mask"][i, : n_prompt - 1].sum().item() == 0.0


def test_sft_loss_is_over_the_tokenizer_vocabulary_and_goes_down(
    pretrained_llama, chat_data, tok, tmp_path
):
    sft = SFT(pretrained_llama, None, chat_data["sft"], sft_config(), tmp_path / "run")
    everything = np.arange(len(sft.train_rows))
    batch = sft.batch(sft.train_rows)
    with torch.no_grad():
        loss_before = sft.loss(everything)[0].item()
        logits = sft.policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits[:, :-1]
        targets, mask = batch["input_ids"][:, 1:], batch["loss_mask"]

        def mean_ce(logits):
            logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
            return -(logprobs * mask).sum().item() / mask.sum().item()

        by_hand, over_padded_rows = mean_ce(logits[..., : len(tok)]), mean_ce(logits)
    assert loss_before == pytest.approx(by_hand, abs=1e-4)
    assert abs(over_padded_rows - by_hand) > 1e-3  # the padded rows would carry probability
    sft.learn()
    with torch.no_grad():
        loss_after = sft.loss(everything)[0].item()
    assert loss_after < loss_before - 1.0, (loss_before, loss_after)


def test_plain_completions_end_with_eos_unless_they_end_with_a_stop_id(
    pretrained_llama, tok, tmp_path
):
    data = [("What is 1 plus 2?", " 3"), ("What is 2 plus 2?", " 4<|endoftext|>")]
    sft = SFT(pretrained_llama, None, data, sft_config(), tmp_path / "run")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    by_ending = {ids[-1]: (ids, n) for ids, n in sft.train_rows}
    plain_ids, n_prompt = by_ending[tok.eos_token_id]
    assert plain_ids == tok("What is 1 plus 2? 3", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    stopped_ids, _ = by_ending[endoftext]  # already ends with a stop id: no second EOS
    assert stopped_ids.count(tok.eos_token_id) == 0
    batch = pad_batch([(plain_ids, n_prompt)], tok.pad_token_id)
    assert batch["loss_mask"][0, -1].item() == 1.0  # the EOS is a learned target


def test_a_tokenizer_without_pad_token_pads_with_eos_and_masks_by_length(
    pretrained_llama, tok, tmp_path
):
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    model = AutoModelForCausalLM.from_pretrained(pretrained_llama)
    data = [("What is 1 plus 2?", " 3"), ("What is 5 plus 5? Say it in words.", " ten")]
    sft = SFT(model, no_pad, data, sft_config(), tmp_path / "run")
    assert no_pad.pad_token_id is None  # the user's tokenizer is left alone
    assert sft.tokenizer.pad_token_id == tok.eos_token_id
    batch = sft.batch(sft.train_rows)
    for i, (ids, n_prompt) in enumerate(sft.train_rows):
        assert batch["attention_mask"][i].sum().item() == len(ids)
        assert batch["loss_mask"][i].sum().item() == len(ids) - n_prompt
    assert np.isfinite(sft.learn()[-1]["loss/total"])


def test_dpo_sequence_logprobs_match_one_forward_by_hand(
    pretrained_llama, chat_data, tok, tmp_path
):
    config = DPOConfig(max_length=64, eval_prompts=0, save_every=0, optim=OptimConfig(1e-3))
    dpo = DPO(pretrained_llama, None, chat_data["pairs"], config, tmp_path / "run")
    rows = read_rows(chat_data["pairs"])[:4]
    chosen, rejected, _ = dpo.pair_logps(dpo.train_logprobs, np.arange(4))
    im_end = tok.convert_tokens_to_ids(IM_END)
    model = AutoModelForCausalLM.from_pretrained(pretrained_llama)
    for i, row in enumerate(rows):
        n_prompt = len(chat_ids(tok, row["prompt"], True))
        for key, got in (("chosen", chosen[i]), ("rejected", rejected[i])):
            ids = chat_ids(tok, row["prompt"] + row[key])
            assert ids[-2] == im_end and ids[:n_prompt] == chat_ids(tok, row["prompt"], True)
            with torch.no_grad():  # one unpadded sequence, the tokenizer's vocabulary only
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1, : len(tok)]
            logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            by_hand = logprobs[n_prompt - 1 :].sum().item()  # answer, <|im_end|>, "\n"
            assert got.item() == pytest.approx(by_hand, abs=1e-4), key
    assert (chosen != rejected).all()


def test_no_padded_vocabulary_row_gets_probability(pretrained_llama, tok):
    model = AutoModelForCausalLM.from_pretrained(pretrained_llama).eval()
    prompt = chat_ids(tok, [{"role": "user", "content": "What is 1 plus 2?"}], True)
    rows = [(prompt + [v], len(prompt)) for v in range(len(tok))]  # every next token once
    batch = pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        logprobs = sequence_logprobs(model, batch, vocab_size=len(tok)).sum(-1)
        unsliced = sequence_logprobs(model, batch).sum(-1)
    assert logprobs.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    assert unsliced.exp().sum().item() < 1.0 - 1e-3  # the padded rows would take mass


def test_dpo_trains_on_conversational_pairs(pretrained_llama, chat_data, tmp_path):
    config = DPOConfig(
        batch_size=12, max_steps=4, max_length=64, eval_prompts=0, log_every=1, save_every=0,
        beta=0.1, optim=OptimConfig(learning_rate=1e-2),
    )  # fmt: skip
    history = DPO(pretrained_llama, None, chat_data["pairs"], config, tmp_path / "run").learn()
    assert history[0]["loss/policy"] == pytest.approx(np.log(2), abs=1e-4)  # π = π_ref at first
    assert history[-1]["loss/policy"] < history[0]["loss/policy"] - 0.05


def test_reward_model_trains_on_conversational_pairs(pretrained_llama, chat_data, tok, tmp_path):
    config = RewardModelConfig(
        batch_size=12, max_steps=8, max_length=64, heldout_fraction=0.0, log_every=1,
        save_every=0, optim=OptimConfig(learning_rate=3e-3),
    )  # fmt: skip
    trainer = RewardModelTrainer(pretrained_llama, chat_data["pairs"], config, tmp_path / "run")
    rows = read_rows(chat_data["pairs"])
    prompts = [r["prompt"] for r in rows]
    batch = trainer.encode(prompts[:1], [rows[0]["chosen"]])  # no EOS after the end of turn
    full = chat_ids(tok, rows[0]["prompt"] + rows[0]["chosen"])
    assert tok.decode(full[-2:]) == "<|im_end|>\n"  # ChatML: a newline after the end of turn
    assert batch["input_ids"][0].tolist() == full[:-1]  # scored at the end-of-turn token ...
    from reward_models.learned import encode_texts

    rendered = tok.apply_chat_template(
        rows[0]["prompt"], tokenize=False, add_generation_prompt=True
    )
    env_batch = encode_texts(tok, [rendered], [rows[0]["chosen"][0]["content"]], 64)
    assert env_batch["input_ids"][0].tolist() == full[:-1]  # ... where the env's scorer reads it

    def accuracy() -> float:
        with torch.no_grad():
            chosen = trainer.scores(prompts, [r["chosen"] for r in rows])
            rejected = trainer.scores(prompts, [r["rejected"] for r in rows])
        return (chosen > rejected).float().mean().item()

    before = accuracy()
    history = trainer.learn()
    assert history[-1]["loss/total"] < history[0]["loss/total"] - 0.1
    assert accuracy() == 1.0 and before < 1.0


def test_prm_renders_a_conversational_prompt(pretrained_llama, tok, tmp_path):
    prompt = [{"role": "user", "content": "What is 1 plus 2 plus 3?"}]
    rows = [{"prompt": prompt, "completions": ["1+2=3", "3+3=6"], "labels": [True, False]}]
    trainer = PRMTrainer(pretrained_llama, rows, PRMConfig(heldout_fraction=0.0), tmp_path / "r")
    ids, ends, labels = trainer.encoded[0]
    rendered = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert ids == tok(rendered + "1+2=3;3+3=6;", add_special_tokens=False)["input_ids"]
    assert [tok.decode(ids[e]) for e in ends] == [";", ";"] and labels == [True, False]


@pytest.mark.parametrize(
    "agent, row",
    [
        ("sft", {"prompt": 5, "completion": "3"}),
        ("dpo", {"prompt": 5, "chosen": "3", "rejected": "4"}),
        ("rm", {"prompt": 5, "chosen": "3", "rejected": "4"}),
        ("prm", {"prompt": 5, "completions": ["1+2=3"], "labels": [True]}),
    ],
)
def test_a_bad_prompt_is_named_by_file_line_and_key(
    pretrained_llama, chat_data, agent, row, tmp_path
):
    good = read_rows(chat_data["sft" if agent == "sft" else "pairs"])[0]
    if agent == "prm":
        good = {"prompt": good["prompt"], "completions": ["1+2=3"], "labels": [True]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    make = {
        "sft": lambda: SFT(pretrained_llama, None, path, sft_config(), tmp_path / "run"),
        "dpo": lambda: DPO(pretrained_llama, None, path, DPOConfig(eval_prompts=0), tmp_path),
        "rm": lambda: RewardModelTrainer(pretrained_llama, path, RewardModelConfig(), tmp_path),
        "prm": lambda: PRMTrainer(pretrained_llama, path, PRMConfig(), tmp_path),
    }[agent]
    message = f"{path}:2: key 'prompt' must be a string or a list of messages, got int"
    with pytest.raises(JsonlError, match=message):
        make()


def test_malformed_and_mixed_conversational_rows_are_named(pretrained_llama, tmp_path):
    path = tmp_path / "sft.jsonl"
    bad_message = {
        "prompt": [{"role": "user"}],
        "completion": [{"role": "assistant", "content": "3"}],
    }
    path.write_text(json.dumps(bad_message) + "\n")
    with pytest.raises(
        JsonlError, match=rf"{path}:1: key 'prompt': message #0 needs a string 'content'"
    ):
        SFT(pretrained_llama, None, path, sft_config(), tmp_path / "run")
    mixed = {"prompt": "What is 1 plus 2?", "completion": [{"role": "assistant", "content": "3"}]}
    path.write_text(json.dumps(mixed) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"{path}:1: key 'completion' is a list of messages but 'prompt' is a string",
    ):
        SFT(pretrained_llama, None, path, sft_config(), tmp_path / "run")
