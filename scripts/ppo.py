"""``tokenmdp ppo``: PPO with a critic against a reward model, through TokenMDP-v0.

  tokenmdp ppo --policy runs/sft-policy --task sentiment --reward-model runs/rm --name rm
  tokenmdp ppo --policy runs/sft-policy --task arithmetic --task-kwargs '{"max_operand": 9}'

Events, config.json, metrics.jsonl, checkpoints and the final policy go to
runs/<task>/ppo-<name>/ (``--resume`` continues a killed run from its last checkpoint).
"""

from __future__ import annotations

from scripts.train import run


def main(argv: list[str] | None = None) -> None:
    run("ppo", argv, __doc__)


if __name__ == "__main__":
    main()
