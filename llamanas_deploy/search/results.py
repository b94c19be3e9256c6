"""A search's front as typed records (`FrontMember`, `choose`), and what it leaves in its output
directory, all derived from the session:

- `evaluations.csv` — every evaluated sub-network with all its measures (the ledger is the JSONL);
- `front.json` — the Pareto front, fastest first (`llamanas export --subnet DIR/front.json#3`);
- `hypervolume.json` — hypervolume per generation, with the fixed reference point;
- `front.png` — accuracy vs predicted latency, the full super-network marked;
- `summary.txt` — one line per front member against the full network, as the paper words it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError
from ..jsonfiles import save_figure, write_json, write_text
from ..subnet_config import SubnetConfig
from .objectives import Objective, direction_sign, sign
from .session import SearchSession, pareto_indices

FRONT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FrontMember:
    """One sub-network of a search's Pareto front and its measures (`objectives`: every measure the
    search recorded, by name). `SearchSpace.validate`, and so `export`, `evaluate_subnet` and
    `extract`, take a member for its `subnet`: `ln.export(supernet, space, result.front[0], ...)`."""

    subnet: SubnetConfig
    objectives: dict[str, float]

    @property
    def subnet_id(self) -> str:
        return self.subnet.id

    def to_dict(self) -> dict[str, Any]:
        """Its entry in `front.json`."""
        return {"subnet": self.subnet.to_dict(), "subnet_id": self.subnet_id, "objectives": dict(self.objectives)}


def choose(front: Sequence[FrontMember], accuracy: str, direction: str, latency: str, budget_ms: float) -> FrontMember:
    """The most accurate member (by `accuracy`, `direction` "min" or "max") whose `latency` is within
    `budget_ms`; of equally accurate ones the fastest."""
    feasible = [m for m in front if m.objectives[latency] <= budget_ms]
    if not feasible:
        raise BadInputError(f"no sub-network found within the latency budget of {budget_ms:.3f} ms",
                            param="max_latency_ms")  # fmt: skip
    factor = direction_sign(direction)
    return min(feasible, key=lambda m: (factor * m.objectives[accuracy], m.objectives[latency]))


def evaluated_records(session: SearchSession) -> list[dict[str, Any]]:
    """Every sub-network of the search, in evaluation order, with its measures and status."""
    configs, F, feasible = session.archive()
    on_front = set(np.flatnonzero(feasible)[pareto_indices(F[feasible])].tolist())
    rows = []
    for i, cfg in enumerate(configs):
        values = session.ledger.records[cfg.id]["values"]
        rows.append(
            {
                "order": i,
                "subnet_id": cfg.id,
                "subnet": cfg.to_dict(),
                "values": {m.name: values[m.name] for m in session.ledger.measures},
                "feasible": bool(feasible[i]),
                "on_front": i in on_front,
            }
        )
    return rows


def front_members(session: SearchSession, records: Sequence[dict[str, Any]]) -> list[FrontMember]:
    """Front members, ordered by the last objective (latency or size: fastest/smallest first)."""
    front = [r for r in records if r["on_front"]]
    last = session.objectives[-1]
    front.sort(key=lambda r: (sign(last) * r["values"][last.name], r["subnet_id"]))
    return [FrontMember(session.visited[r["subnet_id"]], r["values"]) for r in front]


def write_outputs(
    out: Path,
    session: SearchSession,
    settings: dict[str, Any],
    full_id: str,
    size_name: str,
    latency: Objective | None,
    accuracy: Objective | None,
) -> dict[str, Any]:
    """Write every result file; returns what the CLI reports."""
    records = evaluated_records(session)
    front = front_members(session, records)
    full = session.ledger.records[full_id]["values"]
    summary = summary_lines(front, full, size_name, latency, accuracy)
    hv = {**session.normalization.to_dict(session.objectives), "history": session.history}
    write_json(out / "front.json", _front_file(session, settings, front), indent=1)
    write_json(out / "hypervolume.json", hv, indent=1)
    write_text(out / "evaluations.csv", _csv(records, [m.name for m in session.ledger.measures]))
    write_text(out / "summary.txt", "\n".join(summary) + "\n")
    plot_front(out / "front.png", records, full_id, size_name, latency, accuracy or session.objectives[0])
    return {"front": front, "summary": summary, "records": records, "full": {"subnet_id": full_id, "values": full}}


def _front_file(session: SearchSession, settings: dict[str, Any], front: list[FrontMember]) -> dict[str, Any]:
    return {
        "schema_version": FRONT_SCHEMA_VERSION,
        "space_id": session.space.id,
        "objectives": [{"name": o.name, "direction": o.direction} for o in session.objectives],
        "constraints": [c.to_dict() for c in session.constraints],
        "algorithm": settings["algorithm"],
        "evaluations": session.spent,
        "front": [member.to_dict() for member in front],
    }


def summary_lines(
    front: Sequence[FrontMember],
    full: dict[str, float],
    size_name: str,
    latency: Objective | None,
    accuracy: Objective | None,
) -> list[str]:
    """'sub-network 3f2a…: 1.52x smaller, 1.31x faster (predicted), perplexity +0.84' per front member."""
    lines = []
    for i, member in enumerate(front):
        v = member.objectives
        parts = [f"{full[size_name] / v[size_name]:.2f}x smaller"]
        if latency is not None:
            ratio = v[latency.name] / full[latency.name] if latency.direction == "max" else full[latency.name] / v[latency.name]
            parts.append(f"{ratio:.2f}x faster (predicted {latency.name})")
        if accuracy is not None:
            delta = v[accuracy.name] - full[accuracy.name]
            scale = 100.0 if accuracy.direction == "max" else 1.0  # accuracy in points, as the paper
            parts.append(f"{accuracy.name} {delta * scale:+.2f}" + (" points" if scale == 100.0 else ""))
        lines.append(f"#{i} sub-network {member.subnet_id} ({member.subnet.num_layers} layers): " + ", ".join(parts))
    return lines


def plot_front(
    path: Path,
    records: Sequence[dict[str, Any]],
    full_id: str,
    size_name: str,
    latency: Objective | None,
    accuracy: Objective,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name = latency.name if latency is not None else size_name
    y_name = accuracy.name
    xs = lambda rows: [r["values"][x_name] for r in rows]  # noqa: E731
    ys = lambda rows: [r["values"][y_name] for r in rows]  # noqa: E731
    front = sorted((r for r in records if r["on_front"]), key=lambda r: r["values"][x_name])
    full = [r for r in records if r["subnet_id"] == full_id]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(xs(records), ys(records), s=10, c="0.7", label=f"evaluated ({len(records)})")
    ax.plot(xs(front), ys(front), "o-", c="tab:blue", ms=4, label=f"Pareto front ({len(front)})")
    ax.scatter(xs(full), ys(full), marker="*", s=180, c="tab:red", zorder=5, label="full super-network")
    ax.set_xlabel(f"{x_name} ({'predicted' if latency is not None else 'analytic'})")
    ax.set_ylabel(f"{y_name} ({'higher' if accuracy.direction == 'max' else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _csv(records: Sequence[dict[str, Any]], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["order", "subnet_id", "num_layers", "intermediate_sizes", *names, "feasible", "on_front"])
    for r in records:
        sizes = " ".join(str(s) for s in r["subnet"]["intermediate_sizes"])
        values = [repr(r["values"][n]) for n in names]
        writer.writerow([r["order"], r["subnet_id"], r["subnet"]["num_layers"], sizes, *values, r["feasible"], r["on_front"]])
    return buf.getvalue()

