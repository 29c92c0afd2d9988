"""``tokenmdp kl-study``: what the KL estimators k1, k2, k3 do in GRPO's reward and in its loss,
measured exactly on an enumerable token MDP whose KL-regularised optimum π* is known.

  tokenmdp kl-study                       # ~2 min on 2 cores, writes runs/kl_study/
  tokenmdp kl-study --seeds 0,1,2,3 --iterations 600

The MDP: prompt "a", completions of 1–2 tokens over an 8-token vocabulary (57 of them, EOS ends
one early), reward 1.0 for "b", 0.5 "c", 1.5 "bd", 1.0 "cc", else 0; π_ref a fresh tiny GPT-2
(1 layer, 32 wide); π* = π_ref·exp(r/β)/Z. For every estimator × placement (reward | loss):

(a) the estimator's value Σ_t k(y_t) and the gradient it produces where it is placed, against
    the exact KL(π_θ‖π_ref) and ∇_θ KL (enumeration and autograd), at a policy moved away from
    π_ref by exact reward ascent; bias and variance from the exact moments over all completions,
    the bias also as a sampling study measures it (mean of ``--samples`` draws); and on the
    one-token version of the MDP, where the per-state and the sequence KL coincide;
(b) GRPO (Dr. GRPO: r − mean_G, constant aggregation, β = 0.5, k in the reward or the loss) from
    π_ref on the toy: TV to π*, and to the fixed point of GRPO's own expected update (tabular,
    noise-free), which says where each variant converges and why.

Writes ``kl_study.md`` (the table, one finding per row), ``kl_study.json`` and ``kl_study.png``
to ``--out``; prints the table.
"""

from __future__ import annotations

import argparse
import sys

from scripts.options import parse_args_with_smoke, require_writable
from scripts.studies.kl.study import KLStudyConfig, run

SMOKE = {
    "seeds": "0", "iterations": 2, "curve_every": 1, "samples": 64, "ascent_steps": 2,
    "path_points": 2, "flow_steps": 20,
}  # fmt: skip


def seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp kl-study", description=__doc__,
        formatter_class=HelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("--out", default="runs/kl_study", help="where kl_study.md/.json/.png are written")
    add("--seeds", type=seed_list, default="0,1,2", help="seeds of the GRPO runs (comma-separated)")
    add("--iterations", type=int, default=400, help="GRPO iterations per run")
    add("--batch-size", type=int, default=8, help="GRPO prompts per iteration")
    add("--group-size", type=int, default=8, help="GRPO completions per prompt (G)")
    add("--learning-rate", type=float, default=1e-2, help="GRPO peak learning rate (linear decay)")
    add("--beta", type=float, default=0.5, help="KL coefficient β")
    add("--samples", type=int, default=16384, help="draws of the sampled bias")
    add("--ascent-steps", type=int, default=16, help="reward-ascent steps to the studied π_θ")
    add("--ascent-lr", type=float, default=2e-3, help="Adam learning rate of the reward ascent")
    add("--path-points", type=int, default=8, help="gradient studies along the ascent (plot)")
    add("--flow-steps", type=int, default=2000, help="Adam steps of the noise-free expected update")
    add("--curve-every", type=int, default=10, help="record GRPO's TV to π* every N iterations")
    add("--threads", type=int, default=1, help="torch threads (0 = every core)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parse_args_with_smoke(parser, argv, SMOKE))
    args.pop("smoke")
    try:
        config = KLStudyConfig(**{**args, "seeds": tuple(args["seeds"])})
    except ValueError as e:
        parser.error(str(e))
    require_writable(parser, "--out", config.out)
    run(config, argv)


if __name__ == "__main__":
    main()
