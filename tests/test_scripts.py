"""Every script in ``scripts/`` on tiny sizes: the trainer CLIs chained (sft → preferences →
reward-model → dpo / ppo / reinforce), the benchmarks' ``--smoke`` runs, and bad options
rejected before any work with a message naming the option."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from scripts import (
    bench_dpo,
    bench_env,
    bench_grpo,
    bench_memory,
    bench_online_dpo,
    bench_ppo,
    bench_real,
    cli,
    compare,
    dpo,
    evaluate,
    grpo,
    online_dpo,
    pipeline,
    ppo,
    preferences,
    reinforce,
    reward_model,
    sb3_baseline,
    sft,
)
from scripts.studies.stages import check_writable
from tests.tiny_options import tiny_model_argv

TASK = ["--task", "arithmetic", "--task-kwargs", '{"max_operand": 9}']
TINY_MODEL = '{"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}'


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts set torch's thread count for the process; later tests get it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny policy, preference pairs and a reward model, each made by its CLI (pairs labelled
    by length: an untrained policy's sums are all wrong, so their gold rewards all tie)."""
    out = tmp_path_factory.mktemp("cli")
    runs = out / "runs"
    cli.main(["sft", *TASK, "--model-kwargs", TINY_MODEL, "--out", str(out / "policy"),
              "--run-dir", str(runs / "sft"), "--max-steps", "3", "--batch-size", "16"])  # fmt: skip
    preferences.main(["--policy", str(out / "policy"), *TASK, "--out", str(out / "pairs.jsonl"),
                      "--num-prompts", "16", "--num-envs", "16",
                      "--gold-reward-model", "length"])  # fmt: skip
    reward_model.main(["--policy", str(out / "policy"), "--pairs", str(out / "pairs.jsonl"),
                       "--out", str(out / "rm"), "--run-dir", str(runs / "rm"),
                       "--max-steps", "2", "--batch-size", "4",
                       *tiny_model_argv("reward_model")])  # fmt: skip
    return out


def test_sft_preferences_reward_model_clis(trained):
    assert (trained / "policy" / "model.safetensors").is_file()
    rows = (trained / "pairs.jsonl").read_text().splitlines()
    assert rows and {"prompt", "chosen", "rejected"} <= json.loads(rows[0]).keys()
    assert (trained / "rm" / "config.json").is_file()
    assert list((trained / "runs" / "rm").glob("events.out.tfevents.*"))


def test_dpo_cli(trained, tmp_path, capsys):
    dpo.main(["--policy", str(trained / "policy"), "--pairs", str(trained / "pairs.jsonl"),
              *TASK, "--run-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "4",
              "--eval-prompts", "4", "--eval-num-envs", "4", *tiny_model_argv("dpo")])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(summary["loss/total"]) and "reward/gold" in summary
    assert (Path(summary["final_policy"]) / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "main, sizes",
    [
        (ppo.main, ["--batch-size", "4", "--minibatch-size", "2", "--epochs", "1"]),
        (reinforce.main, ["--batch-size", "2", "--k", "2", "--minibatch-size", "4"]),
        (grpo.main, ["--batch-size", "2", "--group-size", "2", "--loss-type", "dr_grpo"]),
        (
            online_dpo.main,
            "--batch-size 2 --labels bradley_terry --rounds 2 --mixture-coef 0.5".split(),
        ),
    ],
    ids=["ppo", "reinforce", "grpo", "online_dpo"],
)
def test_online_clis(trained, tmp_path, capsys, main, sizes):
    main(["--policy", str(trained / "policy"), *TASK, "--reward-model", str(trained / "rm"),
          "--max-new-tokens", "4", "--run-dir", str(tmp_path), "--total-prompts", "4",
          "--precision", "fp32", *sizes,
          *tiny_model_argv(main.__module__.rsplit(".", 1)[-1])])  # fmt: skip
    assert "\ndone: {" in capsys.readouterr().out
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_ppo_cli_with_a_process_reward_model(tmp_path):
    """--process-reward-model task: the arithmetic_chain gold step checker pays each step's
    score on its closing token; the run logs what it paid (reward/process)."""
    ppo.main(["--task", "arithmetic_chain", "--process-reward-model", "task",
              "--process-reward-mode", "step", "--step-boundary", ";", "--run-dir",
              str(tmp_path), "--total-prompts", "4", "--batch-size", "4", "--minibatch-size",
              "4", "--epochs", "1", "--precision", "fp32"])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "reward/process" in rows[-1] and math.isfinite(rows[-1]["reward/process"])


def test_step_boundary_without_a_process_reward_model_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ppo.main(["--step-boundary", ";", "--run-dir", str(tmp_path / "r")])
    assert "step_boundary=';' / process_reward_mode='step' given without process_reward_model" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


def test_evaluate_cli(trained, tmp_path, capsys):
    policy = str(trained / "policy")
    evaluate.main([policy, f"again={policy}", *TASK, "--reference", policy, "--judge", policy,
                   "--reward-model", str(trained / "rm"), "--prompts", "8", "--num-envs", "4",
                   "--out", str(tmp_path / "given")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| judge ppl |" in printed
    results = json.loads((tmp_path / "given" / "results.json").read_text())
    evals = results["evaluations"]
    assert [e["name"] for e in evals] == ["reference", "policy", "again"]
    assert evals[1]["samples"] == evals[2]["samples"]  # the same prompts and seed
    # the reference itself, same samples: a gain of exactly 0, and the table says so
    assert evals[1]["gold_gain"] == 0.0 and evals[1]["gold_gain_ci"] == [0.0, 0.0]
    assert "| +0.000 [+0.000, +0.000] |" in printed
    for e in evals:
        assert e["n"] == 8 and math.isfinite(e["learned_reward"])
        assert 1 < e["judge_ppl"] < 1e4 and 0 <= e["lexicon_fraction"] <= 1
    report = (tmp_path / "given" / "report.md").read_text()
    assert "- **policy** shows " in report and "Failure thresholds" in report
    assert (tmp_path / "given" / "fluency_vs_kl.png").is_file()
    # without --judge, one is pre-trained on the task corpus into OUT/judge
    cli.main(["evaluate", policy, *TASK, "--judge-steps", "2", "--prompts", "4", "--num-envs", "4",
              "--out", str(tmp_path / "trained")])  # fmt: skip
    (e,) = json.loads((tmp_path / "trained" / "results.json").read_text())["evaluations"]
    assert (tmp_path / "trained" / "judge" / "config.json").is_file()
    assert math.isfinite(e["judge_ppl"]) and e["kl_ref"] == 0.0


def test_compare_evaluate_runs_final_policies_through_the_suite(trained, tmp_path, capsys):
    import shutil

    from agents.harness.logging import RunLogger

    for name in ("ppo-a", "dpo-b"):
        run = tmp_path / "runs" / "arithmetic" / name
        RunLogger(run, {"agent": name}).close()
        shutil.copytree(trained / "policy", run / "final")
    RunLogger(tmp_path / "runs" / "arithmetic" / "ppo-unfinished", {}).close()
    policy = str(trained / "policy")
    compare.main([str(tmp_path / "runs"), "--evaluate", *TASK, "--reference", policy,
                  "--judge", policy, "--prompts", "4", "--num-envs", "4",
                  "--out", str(tmp_path / "cmp")])  # fmt: skip
    evals = json.loads((tmp_path / "cmp" / "results.json").read_text())["evaluations"]
    assert [e["name"] for e in evals] == ["reference", "dpo-b", "ppo-a"]
    assert evals[1]["samples"] == evals[2]["samples"] and math.isfinite(evals[1]["judge_ppl"])
    assert "- **ppo-a** shows " in (tmp_path / "cmp" / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/nothing"], "policy 'nothing': '{tmp}/nothing' is not a save_pretrained directory"),
        (["{policy}", "--judge-steps", "-1"], "--judge-steps -1: must be >= 0"),
        (["{policy}", "--prompts", "0"], "prompts must be an integer >= 1, got 0"),
        (["{policy}", "{policy}"], "policy names repeat (policy, policy)"),
    ],
)
def test_evaluate_rejects_bad_options(trained, tmp_path, capsys, argv, message):
    values = {"tmp": tmp_path, "policy": trained / "policy"}
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([a.format(**values) for a in argv] + TASK + ["--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert message.format(**values) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_help_and_demo(capsys):
    cli.main(["--help"])
    assert "commands:" in capsys.readouterr().out
    cli.main(["demo", "--task", "arithmetic", "--num-envs", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("reward=" in line for line in lines)


def test_sb3_baseline_cli(tmp_path, capsys):
    sb3_baseline.main(["--timesteps", "512", "--run-dir", str(tmp_path)])
    result = json.loads(capsys.readouterr().out)
    assert result.keys() == {"reward_before", "reward_after"}
    assert (tmp_path / "sb3_ppo.zip").is_file()


def ratios(text: str, pattern: str = r"ratio=(\S+)") -> list[float]:
    return [float(m) for m in re.findall(pattern, text)]


@pytest.mark.parametrize("main, tag", [(bench_env.main, "env_rollout_vs_generate"),
                                       (bench_ppo.main, "ppo_iter_vs_primitives"),
                                       (bench_grpo.main, "grpo_iter_vs_primitives"),
                                       (bench_online_dpo.main, "online_dpo_iter_vs_primitives")],
                         ids=["bench_env", "bench_ppo", "bench_grpo", "bench_online_dpo"])  # fmt: skip
def test_benchmark_smoke(capsys, main, tag):
    main(["--smoke"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{tag} ratio=")
    assert all(math.isfinite(r) and r > 0 for r in ratios(line))


def test_bench_dpo_smoke(capsys):
    pytest.importorskip("trl")
    bench_dpo.main(["--smoke"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("dpo_epoch_vs_trl ratio=")
    (ratio,) = ratios(line)
    assert math.isfinite(ratio) and ratio > 0
    assert "pairs=" in line and "final_loss ours=" in line


def test_bench_real_iterations_drop_the_warm_up():
    """``Iterations``: call 0 is a warm-up (its time and phases dropped), the median and the
    per-phase means come from the rest, ``update`` is the unphased remainder (by hand, with a
    fake clock). The GRPO comparison calls it from TRL's callback after each TRL step."""
    clock = iter([0.0, 10.0, 13.0, 20.0, 22.0, 30.0, 34.0])  # warm-up start; start/end of the rest
    phases, calls = bench_real.Phases(), []

    def step(i):
        calls.append(i)
        phases.seconds["rollout"] += 1.0 + i  # 1, 2, 3, 4 s

    iterations = bench_real.Iterations(step, phases, clock=lambda: next(clock))
    for _ in range(4):
        iterations()
    median, per = iterations.result()
    assert calls == [0, 1, 2, 3] and iterations.times == [3.0, 2.0, 4.0]
    assert median == 3.0
    assert per == pytest.approx({"rollout": (2 + 3 + 4) / 3, "update": 3.0 - 3.0})


@pytest.mark.slow
def test_bench_real_smoke(capsys):
    pytest.importorskip("trl")
    bench_real.main(["--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    tags = [line.split()[0] for line in lines if " ratio=" in line]
    assert tags == ["grpo_iter_vs_primitives", "grpo_iter_vs_trl", "ppo_iter_vs_primitives",
                    "dpo_epoch_vs_trl"]  # fmt: skip
    assert all(math.isfinite(r) and r > 0 for r in ratios("\n".join(lines)))


@pytest.mark.slow
def test_bench_memory_smoke(capsys):
    bench_memory.main(["--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(bench_memory.SETUPS)
    vs_full = ratios("\n".join(lines), r" x(\d\S*)")
    assert len(vs_full) == len(bench_memory.SETUPS) and all(
        math.isfinite(r) and r > 0 for r in vs_full
    )


# -- bad options fail before any work, naming the option ---------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--methods", "ppo,sac", "--methods 'ppo,sac': unknown method sac; choose from ppo, "),
        ("--betas", "0.1,abc", "--betas '0.1,abc': 'abc' is not a positive number"),
        ("--betas", "0.1,-0.5", "--betas '0.1,-0.5': '-0.5' is not a positive number"),
        ("--betas", "0", "--betas '0': '0' is not a positive number"),
        ("--prompt-budget", "-8", "--prompt-budget -8: must be >= 0"),
        ("--eval-size", "-1", "--eval-size -1: must be >= 0"),
        ("--best-of-n", "3", "--best-of-n 3: must be a power of two"),
        ("--corpus", "c.jsonl", "--corpus is an option of your own task: give --prompts"),
        ("--prompts", "p.jsonl", "--prompts needs --corpus and --gold-reward"),
        (
            "--task",
            "chess",
            "--task 'chess': unknown task; choose from arithmetic, arithmetic_chain, "
            "arithmetic_reasoning, sentiment",
        ),
        ("--precision", "fp8", "--precision 'fp8': choose from auto, bf16, fp32"),
    ],
)
def test_pipeline_rejects_bad_options_before_any_stage(
    option, value, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(pipeline.Pipeline, "run", lambda self: pytest.fail("a stage ran"))
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--out", str(tmp_path), "--quick", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    field = option[2:].replace("-", "_")
    with pytest.raises(ValueError, match=re.escape(message)):  # the same check, in the library
        pipeline.PipelineConfig(**{field: type(getattr(pipeline.PipelineConfig(), field))(value)})


def script(value) -> str | None:
    """Test ids: a script's ``main`` by its module name."""
    return value.__module__.rsplit(".", 1)[-1] if callable(value) else None


REQUIRED = {  # the other options each script needs to get past argparse
    sft.main: ["--task", "arithmetic", "--out", "{tmp}/policy"],
    preferences.main: ["--policy", "{tmp}/p", "--out", "{tmp}/pairs.jsonl"],
    dpo.main: ["--policy", "{tmp}/p", "--pairs", "{tmp}/pairs.jsonl"],
    ppo.main: [],
    reinforce.main: [],
}


@pytest.mark.parametrize(
    "main, option",
    [(main, "--task-kwargs") for main in REQUIRED] + [(sft.main, "--model-kwargs")],
    ids=script,
)
@pytest.mark.parametrize("value", ["{max_operand: 9}", "[9]"])
def test_json_options_are_checked_by_argparse(main, option, value, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in REQUIRED[main]]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and repr(value) in err


@pytest.mark.parametrize(
    "main, argv, option",
    [
        (sft.main, ["--task", "arithmetic", "--out", "{bad}"], "--out"),
        (sft.main, ["--task", "arithmetic", "--out", "{tmp}/o", "--run-dir", "{bad}"], "--run-dir"),
        (preferences.main, ["--policy", "p", "--out", "{bad}/pairs.jsonl"], "--out"),
        (reward_model.main, ["--policy", "p", "--pairs", "x", "--out", "{bad}"], "--out"),
        (
            reward_model.main,
            ["--policy", "p", "--pairs", "x", "--out", "{tmp}/o", "--run-dir", "{bad}"],
            "--run-dir",
        ),
        (dpo.main, ["--policy", "p", "--pairs", "x", "--run-dir", "{bad}"], "--run-dir"),
        (ppo.main, ["--run-dir", "{bad}"], "--run-dir"),
        (ppo.main, ["--run-dir", "{tmp}/r", "--out", "{bad}"], "--out"),
        (reinforce.main, ["--runs-root", "{bad}"], "--run-dir"),
        (sb3_baseline.main, ["--run-dir", "{bad}"], "--run-dir"),
        (compare.main, ["{tmp}", "--out", "{bad}"], "--out"),
        (evaluate.main, ["{tmp}", "--out", "{bad}"], "--out"),
        (pipeline.main, ["--out", "{bad}"], "--out"),
    ],
    ids=script,
)
def test_unwritable_output_fails_before_training(main, argv, option, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = blocker / "out"  # below a regular file: cannot be created, even by root
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(bad=bad, tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} '{bad}" in err and f"{str(blocker)!r} is a file" in err


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "dir", "--out")
    (tmp_path / "f").write_text("")
    check_writable(tmp_path / "f", "--out", file=True)
    with pytest.raises(ValueError, match="--out .*it is a file"):
        check_writable(tmp_path / "f", "--out")
    with pytest.raises(ValueError, match="--out .*it is a directory"):
        check_writable(tmp_path, "--out", file=True)
