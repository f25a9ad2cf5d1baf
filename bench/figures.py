"""The one line format every benchmark prints.

``BENCH <name> <value> <unit> baseline=<value> ratio=<ours/baseline> goal=<goal> <ok|short>``
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: float
    goal: str
    ok: bool

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    def line(self) -> str:
        return (
            f"BENCH {self.name} {self.value:.4g} {self.unit} baseline={self.baseline:.4g} "
            f"ratio={self.ratio:.3g} goal={self.goal} {'ok' if self.ok else 'short'}"
        )
