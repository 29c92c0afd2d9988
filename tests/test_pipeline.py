"""The main job end to end (``--quick``), ``compare`` on two runs, and stage resumption."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from agents.common.logging import RunLogger
from scripts.compare import main as compare_main
from scripts.pipeline import Pipeline, PipelineConfig

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    results = Pipeline(PipelineConfig(out=str(out), quick=True, precision="fp32")).run()
    return out, results


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_quick_pipeline_writes_events_report_results_and_plots(quick_run):
    out, results = quick_run
    for agent in ("ppo-ppo", "reinforce-reinforce", "dpo-dpo", "sft-pretrain"):
        events = list((out / "sentiment" / agent).glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for {agent}"
        assert json.loads((out / "sentiment" / agent / "config.json").read_text())
    saved = json.loads((out / "results.json").read_text())
    names = [e["name"] for e in saved["evaluations"]]
    assert names == ["sft", "ppo", "reinforce", "dpo"]
    for e in saved["evaluations"]:
        assert (
            -1.0 <= e["gold_reward"] <= 1.0
            and e["gold_ci"][0] <= e["gold_reward"] <= e["gold_ci"][1]
        )
        assert e["n"] == 32
    assert saved["evaluations"][0]["kl_ref"] == pytest.approx(0.0, abs=1e-4)  # SFT vs itself
    report = (out / "report.md").read_text()
    assert "reached a mean gold reward of" in report and "frontier.png" in report
    for png in ("frontier.png", "training_curves.png", "overoptimisation.png"):
        assert_png(out / png)
    assert results["evaluations"] == saved["evaluations"]


def test_rerun_skips_finished_stages(quick_run, capsys):
    out, _ = quick_run
    sft_weights = out / "models" / "sft" / "model.safetensors"
    before = sft_weights.stat().st_mtime_ns
    (out / "stages" / "evaluate.json").unlink()  # as if the run died during evaluation
    Pipeline(PipelineConfig(out=str(out), quick=True, precision="fp32")).run()
    printed = capsys.readouterr().out
    for stage in ("sft", "preferences", "reward_model", "ppo", "reinforce", "dpo"):
        assert f"== {stage}: done earlier" in printed
    assert "== evaluate\n" in printed
    assert sft_weights.stat().st_mtime_ns == before


def test_compare_two_runs(quick_run, tmp_path, capsys):
    out, _ = quick_run
    other = tmp_path / "other" / "sentiment" / "ppo-handmade"
    logger = RunLogger(other, {"agent": "ppo"})
    for step, (gold, kl) in enumerate([(0.1, 0.0), (0.3, 1.0), (0.5, 2.5)]):
        logger.log(64 * step, {"reward/gold": gold, "kl/ref": kl, "reward/train": gold})
    logger.close()
    compare_main([str(out), str(tmp_path / "other"), "--out", str(tmp_path / "cmp")])
    table = capsys.readouterr().out
    assert "ppo-handmade" in table and "reinforce-reinforce" in table
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    handmade = next(r for r in results["runs"] if r["run"] == "ppo-handmade")
    assert (handmade["gold_reward"], handmade["kl_ref"]) == (pytest.approx(0.5), pytest.approx(2.5))
    assert handmade["models_in_memory"] == 4
    assert_png(tmp_path / "cmp" / "frontier.png")
