"""scaling.png in the manner of GPT-4's Figure 1: ladder points, the fitted curve, the
registered prediction with its 90% interval and the target's actual loss, compute on a log axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def scaling_png(pred: dict, report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glassgpt.scaling import fit as fit_mod

    sets = [k for k in pred["prediction"] if k in report["actual"]]
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(6 * max(1, len(sets)), 4.5), squeeze=False)
    # the laws' coordinate (fit.compute); a prediction registered before it had exact FLOPs
    axis = fit_mod.compute if pred.get("compute_axis") else (lambda r: r["flops"])
    tc = axis(pred["target"])
    for ax, name in zip(axes[0], sets):
        runs = pred["ladder"]["runs"]
        c = np.array([axis(r) for r in runs])
        y = np.array([r["final_loss"][name] for r in runs])
        ax.scatter(c / tc, y, s=14, color="0.65", label="ladder runs")
        line = fit_mod.on_line(runs, **fit_mod.line_of(pred["target"], pred["ladder"].get("line")))
        ax.scatter([axis(r) / tc for r in line], [r["final_loss"][name] for r in line], s=22, color="0.2",
                   label="runs made like the target (its line)")
        p = pred["prediction"][name]
        grid = np.geomspace(c.min(), tc * 1.5, 200)
        f = pred["fits"][name].get("line") or {}
        if f.get("theta") and not f.get("refused"):
            curve = [fit_mod.predict({"kind": "compute", "theta": f["theta"]}, C=g)[0] for g in grid]
            ax.plot(grid / tc, curve, "--", color="tab:blue", label="L(C) = a·C^b + c on the line")
        lo, hi = p["ci90"]
        ax.errorbar([1.0], [p["loss"]], yerr=[[max(0.0, p["loss"] - lo)], [max(0.0, hi - p["loss"])]], fmt="o", color="tab:blue",
                    capsize=4, label=f"prediction ({p['fit']}, 90% CI)")
        ax.scatter([1.0], [report["actual"][name]["loss"]], marker="*", s=160, color="tab:green", zorder=5,
                   label=f"actual ({report['relative_error'][name]:+.1%})")
        ax.set_xscale("log")
        ax.set_xlabel("compute, fraction of the target's" + (" 6·N·D (N: block parameters)" if pred.get("compute_axis")
                                                             else " FLOPs"))
        ax.set_ylabel(f"{name} loss (nats/token)")
        ax.set_title(f"{name}{'' if pred['regime'][name]['confident'] else '  [regime check failed]'}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
