"""The process-reward scripts on tiny sizes: ``tokenmdp prm`` (sampled Math-Shepherd labels, or a
JSONL file) and ``tokenmdp process-study --quick``, and their bad options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import llm_env
from reward_models import load_reward_model
from scripts import cli
from scripts.studies.process.study import step_auc
from tests.tiny_options import tiny_model_argv

TASK = ["--task", "arithmetic_chain", "--task-kwargs", '{"num_terms": 3, "max_operand": 9}']


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts set torch's thread count for the process (here: one, fast for tiny models);
    later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_dir(chain_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("chain-policy")
    llm_env.tiny_gpt2(
        chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64
    ).save_pretrained(path)
    chain_tokenizer.save_pretrained(path)
    return path


def test_prm_cli_samples_rollout_labels_and_trains(policy_dir, tmp_path, capsys):
    out, run_dir = tmp_path / "prm", tmp_path / "run"
    cli.main(["prm", "--policy", str(policy_dir), *TASK, "--labels", "rollouts", "--rollouts", "2",
              "--num-prompts", "16", "--max-steps", "2", "--batch-size", "4", "--out", str(out),
              "--run-dir", str(run_dir), "--threads", "1", *tiny_model_argv("prm")])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert summary["prm"] == str(out) and 0.0 <= summary["prm/step_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert rows and all(len(r["completions"]) == len(r["labels"]) for r in rows)
    assert type(load_reward_model(str(out))).__name__ == "LearnedProcessRewardModel"
    again = tmp_path / "again"
    cli.main(["prm", "--policy", str(policy_dir), "--data", str(run_dir / "steps.jsonl"),
              "--max-steps", "1", "--batch-size", "4", "--out", str(again), "--run-dir",
              str(tmp_path / "run2"), "--aggregate", "product", "--threads", "1",
              *tiny_model_argv("prm")])  # fmt: skip
    assert json.loads((again / "prm.json").read_text()) == {
        "separator": ";",
        "aggregate": "product",
    }


@pytest.mark.parametrize(
    "argv, message",
    [([], "give --data"), (["--labels", "other", *TASK], "invalid choice: 'other'"),
     (["--aggregate", "max", *TASK], "argument --aggregate: aggregate must be one of"),
     (["--rollouts", "0", *TASK], "rollouts must be > 0")],
)  # fmt: skip
def test_prm_cli_rejects_bad_options(argv, message, policy_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prm", "--policy", str(policy_dir), "--out", str(tmp_path / "o"),
                  "--run-dir", str(tmp_path / "r"), *argv])  # fmt: skip
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_process_study_quick_outcome_and_vineppo(tmp_path, capsys):
    cli.main(["process-study", "--quick", "--out", str(tmp_path), "--methods",
              "ppo_outcome,vineppo", "--seeds", "0,1", "--threads", "1"])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(m, s) for m in ("ppo_outcome", "vineppo") for s in (0, 1)}
    budget = results["budget"]["rl_prompts"]
    for run in runs.values():
        assert [p["completions"] for p in run["points"]][-1] == budget
        assert all(0.0 <= p["pass1"] <= 1.0 for p in run["points"])
    assert runs["vineppo", 0]["rollouts"] > runs["ppo_outcome", 0]["rollouts"] == budget
    report = (tmp_path / "report.md").read_text()
    assert "| ppo_outcome |" in report and "| vineppo |" in report and "| grpo |" not in report
    assert (tmp_path / "pass1.png").stat().st_size > 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["report"].endswith("report.md")


def test_process_study_quick_runs_every_method(tmp_path):
    cli.main(["process-study", "--quick", "--out", str(tmp_path), "--threads", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["summary"]] == [
        "ppo_outcome", "ppo_gold_process", "ppo_prm", "ppo_implicit", "vineppo", "grpo",
    ]  # fmt: skip
    assert 0.0 <= results["prm"]["step_accuracy"] <= 1.0
    assert results["implicit"]["beta"] == 0.1
    for scorer in ("prm", "implicit"):  # NaN only if the held-out steps are all of one label
        assert 0.0 <= results[scorer]["step_auc"] <= 1.0 or math.isnan(results[scorer]["step_auc"])
    assert (tmp_path / "models" / "prm" / "prm.json").is_file()


def test_process_study_num_terms_sets_the_chain_length(tmp_path):
    cli.main(["process-study", "--quick", "--out", str(tmp_path), "--methods", "ppo_implicit",
              "--seeds", "0", "--threads", "1", "--num-terms", "4"])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["num_terms"] == 4
    pairs = [
        json.loads(line) for line in (tmp_path / "data" / "pairs.jsonl").read_text().splitlines()
    ]
    assert pairs and all(row["prompt"].count("+") == 3 for row in pairs)  # four terms


def test_step_auc_by_hand():
    scores, labels = np.array([0.9, 0.2, 0.6, 0.6]), np.array([True, False, True, False])
    # correct {0.9, 0.6} vs wrong {0.2, 0.6}: 3 pairs ranked right, one tie → (3 + 0.5) / 4
    assert step_auc(scores, labels) == 0.875
    assert math.isnan(step_auc(scores[:1], labels[:1]))


@pytest.mark.parametrize(
    "argv, message",
    [(["--methods", "ppo,bogus"], "unknown method ppo, bogus"),
     (["--seeds", "0,x"], "--seeds '0,x': give comma-separated integers"),
     (["--prm-labels", "maybe"], "--prm-labels 'maybe'"),
     (["--dpo-beta", "0"], "--dpo-beta 0.0: must be > 0"),
     (["--num-terms", "1"], "--num-terms 1: a chain needs at least 2 terms")],
)  # fmt: skip
def test_process_study_rejects_bad_options(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["process-study", "--out", str(tmp_path), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
