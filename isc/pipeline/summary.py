"""What ``isc-run`` did: a line per step (what, how many images, how long, skipped or why made) and the µAP
reached, printed as a table and written as ``run_summary.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from isc.core.files import write_json


@dataclass
class Step:
    """One line of the summary table."""

    stage: str
    target: str
    images: int | None
    seconds: float
    skipped: bool
    result: str
    files: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    steps: list[Step] = field(default_factory=list)
    metrics: dict[str, dict[str, object]] = field(default_factory=dict)  # "phase 1 matching" -> Metrics.summary()
    # submissions of a phase this run skipped, left in the submissions folder by an earlier run: not this run's
    left_over: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [f for step in self.steps for f in step.files]

    def table(self) -> str:
        """The steps as an aligned text table, then the µAP reached and the files written."""
        rows = [("stage", "what", "images", "seconds", "result")]
        rows += [(s.stage, s.target, "" if s.images is None else f"{s.images:,}", f"{s.seconds:.1f}", s.result)
                 for s in self.steps]
        rows.append(("total", "", "", f"{sum(s.seconds for s in self.steps):.1f}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                            row[3].rjust(widths[3]), row[4]]).rstrip() for row in rows]
        lines += [f"µAP {name:<22} {m['muap']:.4f}   recall at P90 {p90_text(m)}" for name, m in self.metrics.items()]
        submissions = [f for f in self.files if Path(f).name.startswith("phase")]
        lines += [f"submission: {f}" for f in submissions]
        lines += [f"not this run's (its phase skipped), left by an earlier run: {f}" for f in self.left_over]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        write_json(path, {"steps": [asdict(s) for s in self.steps], "metrics": self.metrics,
                          "left_over": self.left_over}, indent=1)


def p90_text(metrics: dict[str, object]) -> str:
    """The recall at P90 of a summary's metrics, or that the precision never reached 0.9."""
    return "not reached" if metrics["recall_at_p90"] is None else f"{metrics['recall_at_p90']:.4f}"

