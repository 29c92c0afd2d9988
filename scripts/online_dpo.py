"""``tokenmdp online-dpo``: online DPO against a reward model through TokenMDP-v0: the current
policy samples k completions per prompt, the reward labels the pair, DPO's loss trains on it;
``--rounds`` for iterative DPO, ``--mixture-coef`` for Nash-MD's mixture sampling.

  tokenmdp online-dpo --policy runs/sft-policy --task sentiment --beta 0.1
  tokenmdp online-dpo --policy runs/sft-policy --labels bradley_terry --rounds 4
  tokenmdp online-dpo --policy runs/sft-policy --task arithmetic --k 4 --missing-eos-penalty 1

Events, config.json, metrics.jsonl, checkpoints and the final policy go to
runs/<task>/online_dpo-<name>/ (``--resume`` continues a killed run from its last checkpoint).
"""

from __future__ import annotations

from scripts.train import run


def main(argv: list[str] | None = None) -> None:
    run("online_dpo", argv, __doc__)


if __name__ == "__main__":
    main()
