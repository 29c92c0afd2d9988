"""``tokenmdp grpo``: GRPO (and Dr. GRPO / DAPO variants) against a reward model, through
TokenMDP-v0, no critic.

  tokenmdp grpo --policy runs/sft-policy --task arithmetic --group-size 8 --beta 0
  tokenmdp grpo --policy runs/sft-policy --scale-rewards none --loss-type dr_grpo

Events, config.json, metrics.jsonl, checkpoints and the final policy go to
runs/<task>/grpo-<name>/ (``--resume`` continues a killed run from its last checkpoint).
"""

from __future__ import annotations

from scripts.train import run


def main(argv: list[str] | None = None) -> None:
    run("grpo", argv, __doc__)


if __name__ == "__main__":
    main()
