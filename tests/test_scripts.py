"""Bad options rejected before any work, with a message naming the option."""

from __future__ import annotations

import re

import pytest

from scripts import (
    compare,
    dpo,
    pipeline,
    ppo,
    preferences,
    reinforce,
    reward_model,
    sb3_baseline,
    sft,
)
from scripts.options import check_writable


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--methods", "ppo,sac", "--methods 'ppo,sac': unknown method sac; choose from ppo, "),
        ("--betas", "0.1,abc", "--betas '0.1,abc': 'abc' is not a positive number"),
        ("--betas", "0.1,-0.5", "--betas '0.1,-0.5': '-0.5' is not a positive number"),
        ("--betas", "0", "--betas '0': '0' is not a positive number"),
        ("--prompt-budget", "-8", "--prompt-budget -8: must be >= 0"),
        ("--eval-prompts", "-1", "--eval-prompts -1: must be >= 0"),
        ("--task", "chess", "--task 'chess': unknown task; choose from arithmetic, sentiment"),
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
        ),  # fmt: skip
        (dpo.main, ["--policy", "p", "--pairs", "x", "--run-dir", "{bad}"], "--run-dir"),
        (ppo.main, ["--run-dir", "{bad}"], "--run-dir"),
        (ppo.main, ["--run-dir", "{tmp}/r", "--out", "{bad}"], "--out"),
        (reinforce.main, ["--runs-root", "{bad}"], "--run-dir"),
        (sb3_baseline.main, ["--run-dir", "{bad}"], "--run-dir"),
        (compare.main, ["{tmp}", "--out", "{bad}"], "--out"),
        (pipeline.main, ["--out", "{bad}"], "--out"),
    ],
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
