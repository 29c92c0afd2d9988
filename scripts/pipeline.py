"""``tokenmdp pipeline``: the whole RLHF-vs-DPO study on a built-in task or your own data
(``--prompts``, ``--corpus``, ``--gold-reward``), end to end, offline.

argv → ``PipelineConfig`` → ``Pipeline.run()``; the stages, their keys and the report are in
``scripts.studies.pipeline``.
"""

from __future__ import annotations

import argparse

from scripts.flags import add_dataclass_args, dataclass_from_args
from scripts.studies.pipeline.config import PipelineConfig
from scripts.studies.pipeline.study import Pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenmdp pipeline", description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, PipelineConfig)
    args = parser.parse_args(argv)
    try:
        pipeline = Pipeline(dataclass_from_args(PipelineConfig, args))
    except (ValueError, OSError) as e:  # a bad option, file or row: named, before any stage
        parser.error(str(e))
    pipeline.run()


if __name__ == "__main__":
    main()
