"""``tokenmdp compare RUN_DIR...``: one report from the TensorBoard events of any runs.

Finds every agent run (a directory with event files) below the given directories and writes
``report.md``, ``results.json`` and the plots to ``--out``; prints the summary table: per agent,
final gold and train reward, KL, wall time, tokens/s, peak memory and models held in memory.
The held-out evaluations are the pipeline's (``stages/evaluate.json``) where present; with
``--evaluate``, the final policy of every run of a fine-tuning method (``agents.registry``: PPO,
REINFORCE, GRPO, DPO) goes through the evaluation suite
of ``tokenmdp evaluate`` instead, on the same prompts and seed (``--reference``, ``--judge``, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.registry import names
from scripts.evaluate import add_suite_arguments, run_suite
from scripts.options import require_writable
from scripts.studies.report.runs import AgentRun, find_agent_runs
from scripts.studies.report.tables import SUMMARY_COLUMNS, markdown_table
from scripts.studies.report.writer import write_report


def final_policies(runs: list[AgentRun]) -> list[tuple[str, Path]]:
    """``(name, final/)`` of every fine-tuning method's run that saved a final policy, named
    by its run directory (prefixed by its study's when names repeat)."""
    chosen = [r for r in runs if r.agent in names(role="method") and (r.path / "final").is_dir()]
    labels = [r.label for r in chosen]
    return [
        (r.label if labels.count(r.label) == 1 else f"{r.path.parent.parent.name}/{r.label}",
         r.path / "final")
        for r in chosen
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenmdp compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (searched recursively)")
    parser.add_argument("--out", default="runs/compare", help="where the report is written")
    parser.add_argument("--evaluate", action="store_true",
                        help="evaluate every run's final policy with the suite below")  # fmt: skip
    add_suite_arguments(parser)
    args = parser.parse_args(argv)
    require_writable(parser, "--out", args.out)
    runs = find_agent_runs(args.run_dirs)
    if not runs:
        raise SystemExit(f"no TensorBoard event files found under {args.run_dirs}")
    evals = run_suite(parser, args, final_policies(runs)) if args.evaluate else []
    for run_dir in [] if args.evaluate else args.run_dirs:  # the pipeline's evaluations
        stage = Path(run_dir) / "stages" / "evaluate.json"
        if stage.is_file():
            evals += [
                {**e, "name": f"{Path(run_dir).name}/{e['name']}"}
                for e in json.loads(stage.read_text())["evaluations"]
            ]
    results = write_report(runs, evals, Path(args.out))
    print(markdown_table(results["runs"], SUMMARY_COLUMNS))
    print(f"\nreport: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
