"""``tokenmdp process-study``: do process rewards help PPO? A comparison on ``arithmetic_chain``
(three single-digit terms: ``"6+7+9="`` answered ``"6+7=13;13+9=22"``), writing ``report.md``,
``results.json`` and ``pass1.png`` into ``--out``.

From one SFT policy (a tiny GPT-2 pre-trained briefly on the demonstrations), with the same
budget (completions trained on: one per prompt for PPO, G per prompt for GRPO, which thus sees
1/G of the prompts), hyper-parameters and seeds:

- ``ppo_outcome``: PPO, outcome reward only (1 iff the final answer is right);
- ``ppo_gold_process``: + the gold step checker (``arithmetic_chain_steps``) as potential-based
  shaping (the env's ``process_reward_mode="shaping"``: the optimum is unchanged, credit moves
  to the tokens that close a step);
- ``ppo_prm``: + a PRM trained here (``agents.prm``) on SFT samples with gold (or
  ``--prm-labels rollouts``: Math-Shepherd) step labels, as shaping;
- ``ppo_implicit``: + the implicit PRM β·log π_DPO/π_SFT (``reward_models.implicit``; DPO on
  pairs of SFT samples where one is right and the other wrong), as shaping;
- ``vineppo``: outcome only, the critic's values at each step's start replaced by the mean
  return of K rollouts branching from it (``PPOConfig.mc_values``);
- ``grpo``: outcome only, G samples per prompt, no critic (``agents.grpo``): the critic-free
  reference.

Every few iterations each policy is evaluated on the task's held-out prompts (the same samples'
random stream for all): pass@1 (one sample per prompt at temperature 1; the fraction whose final
answer is right) and the k1 KL to the SFT policy per completion. The SFT, PRM and DPO stages are
shared by the seeds and train with the tiny-model settings of ``agents.presets`` (the RL runs
take ``--learning-rate``); ``--quick`` runs a miniature study (a smoke test, well under a minute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.harness.distributed import set_num_threads
from scripts.flags import add_dataclass_args, dataclass_from_args
from scripts.options import check_writable
from scripts.studies.process.study import Study, StudyConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tokenmdp process-study", description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )  # fmt: skip
    add_dataclass_args(parser, StudyConfig, title="study (StudyConfig)")
    args = parser.parse_args(argv)
    try:
        config = dataclass_from_args(StudyConfig, args)
        check_writable(config.out, "--out")
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    set_num_threads(config.threads or None)
    results = Study(config).run()
    print(
        json.dumps({"report": str(Path(config.out) / "report.md"), "summary": results["summary"]})
    )


if __name__ == "__main__":
    main()
