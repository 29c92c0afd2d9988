"""The process study's report: a row per method (final and mean pass@1 over seeds, KL, time),
``pass1.png`` (pass@1 against training and against KL) and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def summarise(results: dict) -> list[dict]:
    """One row per method: final pass@1 (mean over seeds, and the pooled CI of one seed's
    samples), mean pass@1 over the evaluation points (sample efficiency), KL, time, rollouts."""
    rows = []
    for method in results["config"]["methods"].split(","):
        runs = [r for r in results["runs"] if r["method"] == method]
        if not runs:
            continue
        finals = [r["points"][-1] for r in runs]
        rows.append({
            "method": method,
            "pass1": float(np.mean([p["pass1"] for p in finals])),
            "pass1_sd": float(np.std([p["pass1"] for p in finals])),
            "pass1_ci": finals[0]["pass1_ci"],
            "auc": float(np.mean([np.mean([p["pass1"] for p in r["points"]]) for r in runs])),
            "kl": float(np.mean([p["kl"] for p in finals])),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "rollouts": int(np.mean([r["rollouts"] for r in runs])),
        })  # fmt: skip
    return rows


def mean_curve(runs: list[dict], sft: dict) -> tuple[list[float], list[float], list[float]]:
    """(completions, pass@1, KL) of the SFT point and each evaluation point, averaged over the
    seeds' runs (which share their evaluation points)."""
    points = [[sft, *r["points"]] for r in runs]
    n = min(len(p) for p in points)
    mean = lambda key: [float(np.mean([p[i][key] for p in points])) for i in range(n)]  # noqa: E731
    return mean("completions"), mean("pass1"), mean("kl")


def plot(results: dict, path: Path, methods: dict[str, str]) -> None:
    """Pass@1 against completions trained on (each seed thin, their mean bold) and the seeds'
    mean pass@1 against their mean KL to the SFT policy, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(methods, ["tab:blue", "tab:purple", "tab:orange", "tab:green", "tab:red",
                                "tab:gray"]))  # fmt: skip
    sft = results["sft"]
    for method in methods:
        runs = [r for r in results["runs"] if r["method"] == method]
        if not runs:
            continue
        for run in runs:
            points = [sft, *run["points"]]
            left.plot([p["completions"] for p in points], [p["pass1"] for p in points],
                      color=colors[method], alpha=0.25, lw=0.8)  # fmt: skip
        x, pass1, kl = mean_curve(runs, sft)
        left.plot(x, pass1, ".-", color=colors[method], lw=2, label=method)
        right.plot(kl, pass1, ".-", color=colors[method], lw=1.5, label=method)
        right.plot(kl[-1], pass1[-1], "o", ms=9, color=colors[method])
    left.set_xlabel("completions trained on (prompts consumed; GRPO: × G)")
    right.set_xlabel("KL(π ‖ π_SFT) per completion [nats] (big dot: the end)")
    for ax in (left, right):
        ax.set_ylabel("pass@1 (held-out prompts)")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    seeds = results["config"]["seeds"]
    fig.suptitle(f"arithmetic_chain, seeds {seeds} (bold: their mean; SFT at 0 / KL 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path, methods: dict[str, str]) -> None:
    """``results.json``, ``pass1.png`` and ``report.md``; ``methods``: name → description."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    results["summary"] = rows
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "pass1.png", methods)
    sft, b = results["sft"], results["budget"]
    seeds = results["config"]["seeds"]
    lines = [
        "# Process rewards on arithmetic_chain",
        "",
        f"SFT policy: pass@1 {sft['pass1']:.3f} (95% CI {sft['pass1_ci'][0]:.3f}–"
        f"{sft['pass1_ci'][1]:.3f}). Every RL run trains on {b['rl_prompts']} completions, "
        f"{b['rl_batch']} per iteration (PPO: one per prompt; GRPO: {b['group_size']} per "
        f"prompt), seeds {seeds}; pass@1 on the held-out prompts ({b['eval_repeats']} "
        "sample(s) each), KL = k1 to the SFT policy per completion.",
        "",
        "| method | pass@1 (final) | ± sd over seeds | 95% CI (first seed) | mean pass@1 over "
        "training | KL | wall time (s) | rollouts sampled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['pass1']:.3f} | {r['pass1_sd']:.3f} | {r['pass1_ci'][0]:.3f}–"
            f"{r['pass1_ci'][1]:.3f} | {r['auc']:.3f} | {r['kl']:.2f} | {r['seconds']:.0f} | "
            f"{r['rollouts']} |"
        )
    lines += ["", *[f"- `{m}`: {methods[m]}" for m in (r["method"] for r in rows)], ""]
    if "prm" in results:
        p = results["prm"]
        lines.append(f"PRM ({p['labels']} labels, {p['rows']} rows): held-out step accuracy "
                     f"{p['step_accuracy']:.3f} (on steps labelled wrong: "
                     f"{p['bad_step_accuracy']:.3f}; good steps {p['good_fraction']:.3f}), "
                     f"step AUC {p.get('step_auc', float('nan')):.3f}.")  # fmt: skip
    if "implicit" in results:
        i = results["implicit"]
        lines.append(f"Implicit PRM (DPO, β = {i['beta']}, {i['pairs']} right-vs-wrong pairs): "
                     f"step AUC {i.get('step_auc', float('nan')):.3f} on the PRM's held-out "
                     "steps (the reward of a step's own tokens; 0.5 = chance).")  # fmt: skip
    lines += ["", f"Total time: {results['seconds']:.0f} s.", "", "![pass@1](pass1.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
