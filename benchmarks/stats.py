"""Figures: medians of several runs with their min-max, compared to targets.

Only medians and ratios are quoted: these machines are noisy, so a single
run means little.  A ratio is computed per run against the baseline measured
in that same run (the runs are interleaved), and its median is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal["<=", ">="]


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and range of one quantity over the runs."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary | None:
        values = [s for s in samples if not math.isnan(s)]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-run ratios ``value / baseline`` (NaN where either is missing)."""
    return [
        v / b if b and not (math.isnan(v) or math.isnan(b)) else math.nan
        for v, b in zip(values, baseline, strict=True)
    ]


@dataclass(slots=True)
class Figure:
    """One reported figure: consoled's value, its target, and the baselines beside it.

    Attributes:
        scenario: the scenario's short name.
        name: what is measured.
        unit: of the value and the baselines.
        value: consoled's median and range (None when it could not be measured).
        target: the (operator, threshold) the value must meet, or None if informative.
        baselines: the same quantity for ``raw`` and ``conmon`` where it applies.
        note: anything the reader must know (e.g. "stalled").
    """

    scenario: str
    name: str
    unit: str
    value: Summary | None
    target: tuple[Op, float] | None = None
    baselines: dict[str, Summary | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None:
            return False
        op, threshold = self.target
        return self.value.median <= threshold if op == "<=" else self.value.median >= threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "consoled": None if self.value is None else self.value.to_json(),
            "target": None if self.target is None else list(self.target),
            "met": self.met,
            "baselines": {k: None if v is None else v.to_json() for k, v in self.baselines.items()},
            "notes": self.notes,
        }


def fmt_number(x: float) -> str:
    if math.isnan(x):
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_summary(s: Summary | None, note: str = "") -> str:
    if s is None:
        return note or "n/a"
    text = fmt_number(s.median)
    if s.n > 1:
        text += f" [{fmt_number(s.low)}-{fmt_number(s.high)}]"
    return f"{text} {note}".rstrip()


def table(figures: Sequence[Figure]) -> str:
    """A plain-text (and Markdown-compatible) table of figures."""
    header = ("scenario", "figure", "unit", "target", "consoled", "raw", "conmon", "result")
    rows: list[tuple[str, ...]] = [header]
    for fig in figures:
        target = "-" if fig.target is None else f"{fig.target[0]} {fmt_number(fig.target[1])}"
        met = fig.met
        result = "-" if met is None else ("met" if met else "MISSED")
        rows.append(
            (
                fig.scenario,
                fig.name,
                fig.unit,
                target,
                fmt_summary(fig.value, fig.notes.get("consoled", "")),
                fmt_summary(fig.baselines.get("raw"), fig.notes.get("raw", "")),
                fmt_summary(fig.baselines.get("conmon"), fig.notes.get("conmon", "")),
                result,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
