"""``tokenmdp reinforce``: REINFORCE / RLOO (k samples per prompt, no critic) against a reward
model, through TokenMDP-v0.

  tokenmdp reinforce --policy runs/sft-policy --task sentiment --reward-model runs/rm --k 4
  tokenmdp reinforce --policy runs/sft-policy --baseline moving_average --name ma

Events, config.json, metrics.jsonl, checkpoints and the final policy go to
runs/<task>/reinforce-<name>/ (``--resume`` continues a killed run from its last checkpoint).
"""

from __future__ import annotations

from scripts.train import run


def main(argv: list[str] | None = None) -> None:
    run("reinforce", argv, __doc__)


if __name__ == "__main__":
    main()
