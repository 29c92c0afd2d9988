"""The main job end to end (``--quick``), ``compare`` on two runs, stage resumption, and stages
reused or rerun by their inputs' keys (with the training stages replaced by recorders)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from agents.harness.logging import RunLogger
from agents.registry import names
from scripts.compare import main as compare_main
from scripts.studies.pipeline.config import PipelineConfig
from scripts.studies.pipeline.study import Pipeline
from scripts.studies.report.runs import read_scalars
from scripts.studies.stages import Clock

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    results = Pipeline(PipelineConfig(out=str(out), quick=True, precision="fp32")).run()
    return out, results


def len_vocab(out: Path) -> int:
    return json.loads((out / "models" / "judge" / "config.json").read_text())["vocab_size"]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


BETAS = (0.03, 0.1, 0.3, 1.0)  # the default sweep
METHODS = names(role="method")  # the default methods: every registered fine-tuning method
RUNS = [f"{m}-beta{b:g}" for m in METHODS for b in BETAS]


@pytest.mark.slow
def test_quick_pipeline_writes_events_report_results_and_plots(quick_run):
    out, results = quick_run
    for agent in [f"{run.split('-')[0]}-{run}" for run in RUNS] + ["sft-pretrain"]:
        events = list((out / "sentiment" / agent).glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for {agent}"
        assert json.loads((out / "sentiment" / agent / "config.json").read_text())
    for run in RUNS:  # each run trained at its β
        config = json.loads(
            (out / "sentiment" / f"{run.split('-')[0]}-{run}" / "config.json").read_text()
        )
        beta = config["beta"] if "beta" in config else config["kl"]["beta"]
        assert beta == float(run.partition("-beta")[2])
    saved = json.loads((out / "results.json").read_text())
    names = [e["name"] for e in saved["evaluations"]]
    assert names == ["sft", *RUNS]
    for method in METHODS:  # one frontier point per β, by KL
        points = saved["frontiers"][method]
        assert sorted(p["beta"] for p in points) == list(BETAS)
        assert [p["kl_ref"] for p in points] == sorted(p["kl_ref"] for p in points)
        assert saved["gao_fits"][method]["form"] == "rl"
    curves = saved["best_of_n"]["curves"]
    assert set(curves) == {"learned", "gold"} and [r["n"] for r in curves["gold"]] == [1, 2, 4, 8]
    assert saved["gao_fits"]["best-of-n (learned reward)"]["form"] == "bon"
    online = {f"{r.split('-')[0]}-{r}" for r in RUNS if not r.startswith("dpo")}
    assert saved["gao_fits_training"] and set(saved["gao_fits_training"]) <= online
    for e in saved["evaluations"]:
        assert (
            -1.0 <= e["gold_reward"] <= 1.0
            and e["gold_ci"][0] <= e["gold_reward"] <= e["gold_ci"][1]
        )
        assert e["n"] == 32
        assert 1 < e["judge_ppl"] < len_vocab(out) and 0 < e["lexicon_fraction"] <= 1
        for key in ("distinct_1", "distinct_2", "unique_fraction", "self_bleu", "eos_rate"):
            assert 0 <= e[key] <= 1, (e["name"], key)
    assert saved["evaluations"][0]["kl_ref"] == pytest.approx(0.0, abs=1e-4)  # SFT vs itself
    sft_gold = saved["evaluations"][0]["gold_reward"]
    for e in saved["evaluations"][1:]:  # the gain over SFT, paired over the same prompts
        assert e["gold_gain"] == pytest.approx(e["gold_reward"] - sft_gold)
        assert e["gold_gain_ci"][0] <= e["gold_gain"] <= e["gold_gain_ci"][1]
    report = (out / "report.md").read_text()
    assert "reached a mean gold reward of" in report and "frontier.png" in report
    assert "fluency_vs_kl.png" in report and "Failure thresholds" in report
    for name in RUNS:
        assert f"- **{name}** shows " in report
    assert "## Reward–KL frontier" in report and "### Over-optimisation law" in report
    for png in ("frontier.png", "training_curves.png", "overoptimisation.png", "fluency_vs_kl.png",
                "overoptimisation_law.png"):  # fmt: skip
        assert_png(out / png)
    scalars, _ = read_scalars(out / "sentiment" / "ppo-ppo-beta0.1")  # the held-out evaluation's
    assert [step for step, _ in scalars["eval/judge_ppl"]] == [scalars["kl/ref"][-1][0]]
    assert results["evaluations"] == saved["evaluations"]


@pytest.mark.slow
def test_rerun_skips_finished_stages(quick_run, capsys):
    out, _ = quick_run
    sft_weights = out / "models" / "sft" / "model.safetensors"
    before = sft_weights.stat().st_mtime_ns
    (out / "stages" / "evaluate.json").unlink()  # as if the run died during evaluation
    Pipeline(PipelineConfig(out=str(out), quick=True, precision="fp32")).run()
    printed = capsys.readouterr().out
    for stage in ["sft", "judge", "preferences", "reward_model", "best_of_n", *RUNS]:
        assert f"== {stage}: done earlier with the same inputs" in printed
    assert "== evaluate: unfinished earlier with the same inputs, resuming" in printed
    assert sft_weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_compare_two_runs(quick_run, tmp_path, capsys):
    out, _ = quick_run
    other = tmp_path / "other" / "sentiment" / "ppo-handmade"
    logger = RunLogger(other, {"agent": "ppo"})
    for step, (gold, kl) in enumerate([(0.1, 0.0), (0.3, 1.0), (0.5, 2.5)]):
        logger.log(64 * step, {"reward/gold": gold, "kl/ref": kl, "reward/train": gold})
    logger.close()
    compare_main([str(out), str(tmp_path / "other"), "--out", str(tmp_path / "cmp")])
    table = capsys.readouterr().out
    assert "ppo-handmade" in table and "reinforce-reinforce-beta0.1" in table
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    handmade = next(r for r in results["runs"] if r["run"] == "ppo-handmade")
    assert (handmade["gold_reward"], handmade["kl_ref"]) == (pytest.approx(0.5), pytest.approx(2.5))
    assert handmade["models_in_memory"] == 4
    assert_png(tmp_path / "cmp" / "frontier.png")


@pytest.fixture
def recorded_stages(monkeypatch):
    """Replace every stage's work with a recorder: ``calls`` lists (stage, whether the output it
    leaves, e.g. a checkpoint in its run directory, was there from an earlier run) in order."""
    calls = []

    def recorder(stage: str | None, output: Callable[..., Path]):
        def work(self, *method):  # method: (agent, name, beta) for train_method
            path = output(self, *method[:2])
            calls.append((stage or method[1], path.exists()))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("weights")
            return {"evaluations": []}

        return work

    for fn, stage, output in [
        ("train_sft", "sft", lambda self: self.agents_dir / "sft-pretrain" / "checkpoint"),
        ("train_judge", "judge", lambda self: self.judge_dir / "model"),
        ("make_preferences", "preferences", lambda self: self.pairs),
        ("train_reward_model", "reward_model", lambda self: self.rm_dir / "model"),
        ("best_of_n", "best_of_n", lambda self: self.bon_path),
        ("train_method", None, lambda self, *m: self.method_dir(*m) / "checkpoint"),
        ("evaluate", "evaluate", lambda self: self.out / "evaluate-did-run"),
    ]:
        monkeypatch.setattr(Pipeline, fn, recorder(stage, output))
    return calls


def run_stages(out: Path, **options) -> None:
    options = {"betas": "default", **options}
    Pipeline(PipelineConfig(out=str(out), quick=True, methods="ppo,dpo", **options)).run_stages()


ALL_STAGES = ["sft", "judge", "preferences", "reward_model", "best_of_n", "ppo", "dpo", "evaluate"]


def test_same_inputs_reuse_every_stage(recorded_stages, tmp_path, capsys):
    run_stages(tmp_path)
    assert [stage for stage, _ in recorded_stages] == ALL_STAGES
    recorded_stages.clear()
    capsys.readouterr()
    run_stages(tmp_path)
    assert recorded_stages == []
    printed = capsys.readouterr().out
    for stage in ALL_STAGES:
        assert f"== {stage}: done earlier with the same inputs, reusing" in printed


def test_changed_seed_reruns_every_stage_from_scratch(recorded_stages, tmp_path, capsys):
    run_stages(tmp_path, seed=0)
    recorded_stages.clear()
    capsys.readouterr()
    run_stages(tmp_path, seed=1)
    trained = [(stage, stale) for stage, stale in recorded_stages if stage != "evaluate"]
    assert trained == [(stage, False) for stage in ALL_STAGES[:-1]]  # no stale checkpoint
    assert recorded_stages[-1][0] == "evaluate"
    printed = capsys.readouterr().out
    assert "== sft: inputs changed (agent config changed, seed 0 → 1), rerunning" in printed
    assert "== judge: inputs changed (agent config changed, seed 1 → 2), rerunning" in printed
    assert (
        "== ppo: inputs changed (sft changed, reward_model changed, agent config changed, "
        "seed 0 → 1)"
    ) in printed


def test_changed_betas_rerun_only_methods_and_evaluate(recorded_stages, tmp_path, capsys):
    run_stages(tmp_path, betas="0.1")
    recorded_stages.clear()
    capsys.readouterr()
    run_stages(tmp_path, betas="0.1,0.2")
    assert [stage for stage, _ in recorded_stages] == ["ppo-beta0.2", "dpo-beta0.2", "evaluate"]
    printed = capsys.readouterr().out
    for stage in ("sft", "judge", "preferences", "reward_model", "ppo-beta0.1", "dpo-beta0.1"):
        assert f"== {stage}: done earlier with the same inputs" in printed
    assert "== evaluate: inputs changed (ppo-beta0.2 changed, dpo-beta0.2 changed)" in printed


def test_changed_agent_default_or_preset_reruns_that_method(
    recorded_stages, tmp_path, capsys, monkeypatch
):
    """A stage's key holds the fingerprint of the agent config it builds: a new default in the
    agent's config class (a release) or an edited tiny-model preset reruns that method's stage
    (and the evaluation), nothing else."""
    import dataclasses

    import agents.ppo
    from agents.presets import TINY_MODEL_OPTIONS

    run_stages(tmp_path)
    recorded_stages.clear()
    capsys.readouterr()

    @dataclasses.dataclass
    class PPOConfig(agents.ppo.PPOConfig):  # the same class name, one default changed
        epochs: int = agents.ppo.PPOConfig.epochs + 1

    monkeypatch.setattr(agents.ppo, "PPOConfig", PPOConfig)
    run_stages(tmp_path)
    assert [stage for stage, _ in recorded_stages] == ["ppo", "evaluate"]
    assert "== ppo: inputs changed (agent config changed), rerunning" in capsys.readouterr().out
    recorded_stages.clear()
    monkeypatch.setitem(TINY_MODEL_OPTIONS, "dpo", {"optim.learning_rate": 1e-4})
    run_stages(tmp_path)
    assert [stage for stage, _ in recorded_stages] == ["dpo", "evaluate"]


@pytest.mark.parametrize("seed, resumed", [(0, True), (1, False)])
def test_unfinished_stage_resumes_only_with_the_same_inputs(
    recorded_stages, tmp_path, capsys, seed, resumed
):
    run_stages(tmp_path, seed=0)
    (tmp_path / "stages" / "ppo.json").unlink()  # as if ppo had died mid-run
    recorded_stages.clear()
    run_stages(tmp_path, seed=seed)
    assert ("ppo", resumed) in recorded_stages
    expected = (
        "unfinished earlier with the same inputs, resuming"
        if resumed
        else "inputs changed (sft changed, reward_model changed, agent config changed, seed 0 → 1),"
        " rerunning"
    )
    assert f"== ppo: {expected}\n" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_arithmetic_pipeline_is_rl_from_verifiable_rewards(tmp_path):
    """--task arithmetic: no reward model stage, RL against the verifier, pass@k reported."""
    out = tmp_path / "arith"
    Pipeline(PipelineConfig(out=str(out), quick=True, task="arithmetic")).run()
    stages = {p.stem for p in (out / "stages").glob("*.json") if ".inputs" not in p.name}
    assert "reward_model" not in stages and {"ppo", "reinforce", "grpo", "dpo"} <= stages
    evals = json.loads((out / "results.json").read_text())["evaluations"]
    for e in evals:
        assert e["pass_k"] == 4 and e["gold_reward"] <= e["pass_at_k"] <= 1.0
        assert "learned_reward" not in e
    config = json.loads((out / "arithmetic" / "grpo-grpo" / "run.json").read_text())
    assert config["agent"] == "grpo"


# -- your own task: prompts, corpus and a plain reward function ---------------------------------

GOLD_MODULE = '''
def reward(prompts, completions, **kwargs):
    """TRL's reward-function signature: the share of words that are "good"."""
    return [c.split().count("good") / max(1, len(c.split())) for c in completions]
'''


def write_own_task(root: Path) -> dict[str, str]:
    """Small JSONL files and a reward module, as a user would bring them."""
    import random

    rng = random.Random(0)
    subjects = ["the film", "the book", "the song", "the play", "the show", "the meal"]
    words = ["good", "bad", "fine", "dull", "long", "short"]
    corpus = [f"{rng.choice(subjects)} was {rng.choice(words)} and {rng.choice(words)} ."
              for _ in range(300)]  # fmt: skip
    files = {"prompts": subjects[:4], "eval_prompts": subjects[4:], "corpus": corpus}
    paths = {}
    for name, rows in files.items():
        key = "text" if name == "corpus" else "prompt"
        paths[name] = str(root / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps({key: r}) + "\n" for r in rows))
    (root / "my_gold.py").write_text(GOLD_MODULE)
    return paths


@pytest.mark.slow
def test_pipeline_runs_on_your_own_prompts_corpus_and_reward_function(tmp_path, monkeypatch):
    from llm_env.tokenizer import load_tokenizer
    from scripts.pipeline import main

    paths = write_own_task(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_gold

    out = tmp_path / "own"
    main(["--out", str(out), "--quick", "--prompts", paths["prompts"], "--corpus",
          paths["corpus"], "--gold-reward", f"{tmp_path / 'my_gold.py'}:reward", "--eval-prompts",
          paths["eval_prompts"], "--methods", "ppo,dpo", "--betas", "0.1,1"])  # fmt: skip
    tokenizer = load_tokenizer(out / "models" / "sft")  # trained on the corpus
    text = "the show was good and dull ."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    results = json.loads((out / "results.json").read_text())
    evals = results["evaluations"]
    assert [e["name"] for e in evals] == ["sft", "ppo-beta0.1", "ppo-beta1", "dpo-beta0.1",
                                          "dpo-beta1"]  # fmt: skip
    for e in evals:  # held-out prompts only, scored by the user's function
        for s in e["samples"]:
            assert s["prompt"] in ("the meal", "the show")
            assert s["gold_reward"] == pytest.approx(my_gold.reward([], [s["completion"]])[0])
    curves = results["best_of_n"]["curves"]
    assert set(curves) == {"learned", "gold"}
    for rows in curves.values():
        assert [r["n"] for r in rows] == [1, 2, 4, 8]
        assert [r["kl"] for r in rows] == pytest.approx([math.log(n) - (n - 1) / n
                                                         for n in (1, 2, 4, 8)])  # fmt: skip
    gold_selected = [r["gold_reward"] for r in curves["gold"]]
    assert gold_selected == sorted(gold_selected)  # the best of more samples is never worse
    fitted = {name for name, points in results["frontiers"].items()  # two points with KL > 0
              if sum(p["kl_ref"] > 0 for p in points) >= 2}  # fmt: skip
    assert set(results["gao_fits"]) == fitted | {"best-of-n (learned reward)",
                                                 "best-of-n (gold reward)"}  # fmt: skip
    assert set(results["frontiers"]) == {"ppo", "dpo"}
    report = (out / "report.md").read_text()
    assert "## Reward–KL frontier" in report and "Over-optimisation law" in report
    assert_png(out / "frontier.png")
    assert_png(out / "overoptimisation_law.png")


def test_own_task_options_are_checked_before_any_stage(tmp_path, monkeypatch):
    paths = write_own_task(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    own = {"prompts": paths["prompts"], "corpus": paths["corpus"], "gold_reward": "my_gold:reward"}
    bad_corpus = tmp_path / "bad.jsonl"
    bad_corpus.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    cases = [
        ({**own, "corpus": str(bad_corpus)}, f"{bad_corpus}:2: missing key 'text'"),
        ({**own, "gold_reward": "my_gold:missing"}, "cannot import 'missing' from 'my_gold'"),
        ({**own, "task": "arithmetic"}, "--task 'arithmetic' and --prompts: choose"),
        ({**own, "eval_prompts": str(tmp_path / "nope.jsonl")}, "nope.jsonl' does not exist"),
    ]
    for options, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
            PipelineConfig(out=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


def test_own_task_stage_keys_follow_the_files_and_accept_a_plain_function(tmp_path, monkeypatch):
    paths = write_own_task(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_gold

    config = PipelineConfig(prompts=paths["prompts"], corpus=paths["corpus"],
                            gold_reward=my_gold.reward)  # fmt: skip
    assert config.task == "jsonl"
    identity = config.task_identity()
    assert identity["gold_reward"] == "my_gold.reward"  # stable across processes, unlike repr
    with open(paths["corpus"], "a") as f:
        f.write(json.dumps({"text": "the film was good ."}) + "\n")
    changed = config.task_identity()
    assert changed["files"]["corpus"] != identity["files"]["corpus"]
    assert changed["files"]["prompts"] == identity["files"]["prompts"]


def test_estimate_sums_the_measured_rates_of_the_stages_left(recorded_stages, tmp_path):
    def pipeline(betas="0.03,0.1,0.3"):
        return Pipeline(PipelineConfig(out=str(tmp_path), quick=True, methods="ppo,dpo",
                                       betas=betas))  # fmt: skip

    first = pipeline()
    cost = first.budget.seconds
    total, parts = first.estimate(first.plan())
    runs = 2 * 3  # two methods at three βs
    expected = sum(cost[s] for s in ("sft", "judge", "preferences", "reward_model", "best_of_n"))
    expected += 3 * (cost["ppo"] + cost["dpo"]) + (1 + runs) * cost["evaluate"]
    assert total == pytest.approx(expected)
    assert "ppo 0.5s ×3" in parts and f"evaluate {cost['evaluate']:.2g}s ×7" in parts
    first.run_stages()
    done = pipeline()
    assert done.estimate(done.plan()) == (0.0, "nothing left to run")
    wider = pipeline("0.03,0.1,0.3,1")  # one more β: its two runs and the evaluation are left
    total, _ = wider.estimate(wider.plan())
    assert total == pytest.approx(cost["ppo"] + cost["dpo"] + (1 + runs + 2) * cost["evaluate"])


def test_clock_rescales_the_time_left_by_the_measured_speed():
    clock = Clock({"sft": 10.0, "rm": 0.0, "ppo": 20.0, "dpo": 30.0})
    assert clock.slowdown is None and clock.left() == 60.0  # nothing ran: the reference
    clock.record("sft", 15.0)  # 1.5x slower than the reference
    assert clock.slowdown == 1.5 and clock.left() == pytest.approx(1.5 * 50)
    clock.record("rm", 99.0)  # no reference time: leaves the plan, not the speed
    assert clock.slowdown == 1.5
    clock.record("ppo", 10.0)  # (15 + 10) / (10 + 20)
    assert clock.slowdown == pytest.approx(25 / 30) and clock.left() == pytest.approx(25.0)
    clock.record("dpo", 30.0)
    assert clock.left() == 0.0


def test_run_recalibrates_after_each_stage_and_keeps_the_estimates(recorded_stages, tmp_path):
    """Stages that ran recalibrate the estimate; reused ones do not (time.json says so)."""
    study = Pipeline(PipelineConfig(out=str(tmp_path), quick=True, methods="dpo", betas="0.1"))
    study.run_stages()
    timing = json.loads((tmp_path / "time.json").read_text())
    after = [entry["after"] for entry in timing["calibrated"]]
    assert after == [s.name for s in study.plan()]  # every stage has a quick reference time
    last = timing["calibrated"][-1]
    assert last["estimate_s"] == pytest.approx(last["elapsed_s"])  # nothing left
    assert timing["took_s"] >= last["elapsed_s"]
    seconds = {n: json.loads((tmp_path / "stages" / f"{n}.json").read_text())["seconds"]
               for n in after}  # fmt: skip
    reference = Pipeline(PipelineConfig(quick=True, methods="dpo", betas="0.1")).budget.seconds
    first = timing["calibrated"][0]
    assert first["slowdown"] == pytest.approx(seconds["sft"] / reference["sft"])
    Pipeline(PipelineConfig(out=str(tmp_path), quick=True, methods="dpo", betas="0.1")).run_stages()
    assert json.loads((tmp_path / "time.json").read_text())["calibrated"] == []  # all reused
