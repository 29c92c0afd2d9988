"""``tokenmdp length-study``: on ``arithmetic_reasoning`` (sums answered directly, ``"4+17+9+12="``
→ ``"42"``, or step by step, ``"4+17=21;21+9=30;30+12=42"``; only the final number is
rewarded), does the completion length grow under RL as accuracy rises, does GRPO's
per-sequence normalisation make wrong answers longer than Dr. GRPO's, and which variants keep
the entropy from collapsing? Writes ``report.md``, ``results.json`` and ``length.png`` into
``--out``.

From one SFT policy (a tiny GPT-2 pre-trained on demonstrations that mostly answer directly,
``--steps-fraction`` of them step by step), with the same budget (prompts × G completions),
hyper-parameters and seeds:

- ``grpo``: (r − mean_G)/std_G advantages, token mean per sequence, then mean over sequences;
- ``dr_grpo``: r − mean_G, token sum over the constant sequences × max_new_tokens;
- ``dapo``: token mean over the minibatch, clip-higher (ε_high 0.28), soft over-long penalty
  over the 4 tokens beyond the longest step-by-step answer (no complete answer is penalised);
- ``gspo``: one sequence-level importance ratio exp(mean_t log ρ_t), GSPO's ε 3e-4 / 4e-4;
- ``cispo``: CISPO's stop-gradient weight min(ρ, 5) on log π, token mean.

Every few iterations each policy is evaluated on the task's held-out prompts (the same samples'
random stream for all, temperature 1): pass@1, mean length, the share of completions that
write steps (``arithmetic_reasoning.writes_steps``), the entropy of the sampled tokens (π's
exact entropy at each generated position, token mean), the length of right and of wrong
answers and the k1 KL to the SFT policy. The report gives each final value as a mean over the
seeds with a 95% t-interval and answers the three questions from those numbers.
``--quick`` runs a miniature study (a smoke test, seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.harness.distributed import set_num_threads
from scripts.flags import add_dataclass_args, dataclass_from_args
from scripts.options import check_writable
from scripts.studies.length.study import Study, StudyConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tokenmdp length-study", description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )  # fmt: skip
    add_dataclass_args(parser, StudyConfig, title="study (StudyConfig)")
    args = parser.parse_args(argv)
    try:
        config = dataclass_from_args(StudyConfig, args)
        check_writable(config.out, "--out")
        study = Study(config)  # checks the task options against the model's positions
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    set_num_threads(config.threads or None)
    results = study.run()
    print(json.dumps({"report": str(Path(config.out) / "report.md"),
                      "answers": results["answers"]}))  # fmt: skip


if __name__ == "__main__":
    main()
