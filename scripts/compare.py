"""``tokenmdp compare RUN_DIR...``: one report from the TensorBoard events of any runs.

Finds every agent run (a directory with event files) below the given directories and writes
``report.md``, ``results.json`` and the plots to ``--out``; prints the summary table: per agent,
final gold and train reward, KL, wall time, tokens/s, peak memory and models held in memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts.options import require_writable
from scripts.report import SUMMARY_COLUMNS, find_agent_runs, markdown_table, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenmdp compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (searched recursively)")
    parser.add_argument("--out", default="runs/compare", help="where the report is written")
    args = parser.parse_args(argv)
    require_writable(parser, "--out", args.out)
    runs = find_agent_runs(args.run_dirs)
    if not runs:
        raise SystemExit(f"no TensorBoard event files found under {args.run_dirs}")
    evals = []
    for run_dir in args.run_dirs:  # final evaluations written by the pipeline, when present
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
