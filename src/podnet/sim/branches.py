"""Random choices as branches.

A walk is a deterministic function of the choices it is handed. Wherever the
kernel would draw a random number (iptables `statistic`, nft `numgen`, IPVS
schedulers, ECMP hashing), the code calls `chooser(key, options)` with the
options and their probabilities. `explore(run)` runs the walk once per
combination of choices, depth first, and returns every outcome with its
probability; `seeded(seed)` and `fixed(...)` follow one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")

Options = Sequence[tuple[str, float]]


@dataclass(slots=True)
class Choice:
    key: str
    options: tuple[tuple[str, float], ...]
    index: int

    @property
    def label(self) -> str:
        return self.options[self.index][0]

    @property
    def probability(self) -> float:
        return self.options[self.index][1]


@dataclass(slots=True)
class Branch(Generic[T]):
    probability: float
    choices: list[Choice]
    result: T


class _ReplayChooser:
    """Replays a fixed prefix of choice indices, then takes the first viable option."""

    def __init__(self, prefix: Sequence[int]):
        self.prefix = list(prefix)
        self.trail: list[Choice] = []

    def __call__(self, key: str, options: Options) -> int:
        opts = tuple((str(label), float(p)) for label, p in options)
        depth = len(self.trail)
        if depth < len(self.prefix):
            index = self.prefix[depth]
        else:
            index = next((i for i, (_, p) in enumerate(opts) if p > 0), 0)
        self.trail.append(Choice(key, opts, index))
        return index


class BranchLimitExceeded(Exception):
    pass


def explore(run: Callable[[Callable], T], limit: int = 512) -> list[Branch[T]]:
    """Every outcome of `run(chooser)` over all combinations of choices.

    Outcomes come in the order of their choices (first option first), which is
    the order a reader expects: endpoint 1, endpoint 2, ...
    """
    results: list[Branch[T]] = []
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        chooser = _ReplayChooser(prefix)
        result = run(chooser)
        probability = 1.0
        for choice in chooser.trail:
            probability *= choice.probability
        results.append(Branch(probability, list(chooser.trail), result))
        if len(results) >= limit:
            raise BranchLimitExceeded(f"more than {limit} possible outcomes")
        # alternatives at every depth this run decided on its own, last first,
        # pushed in reverse so the stack pops them in option order
        alternatives: list[list[int]] = []
        for depth in range(len(prefix), len(chooser.trail)):
            choice = chooser.trail[depth]
            base = [c.index for c in chooser.trail[:depth]]
            for i, (_, p) in enumerate(choice.options):
                if i != choice.index and p > 0:
                    alternatives.append(base + [i])
        # depth-first in option order: shallower alternatives come after deeper ones
        alternatives.sort(key=lambda path: path)
        stack.extend(reversed(alternatives))
    return results


def seeded(seed: int) -> Callable:
    """A chooser that draws like the kernel would, reproducibly."""
    rng = random.Random(seed)

    def choose(key: str, options: Options) -> int:
        r = rng.random()
        acc = 0.0
        for i, (_, p) in enumerate(options):
            acc += p
            if r < acc:
                return i
        return len(options) - 1
    return choose


def fixed(picks: dict[str, int] | None = None, default: int = 0) -> Callable:
    """A chooser taking the given option per key (by key prefix match), else `default`."""
    picks = picks or {}

    def choose(key: str, options: Options) -> int:
        for prefix, index in picks.items():
            if key.startswith(prefix) and index < len(options):
                return index
        return min(default, len(options) - 1)
    return choose


@dataclass(slots=True)
class Recorder:
    """Wraps a chooser and keeps the choices it made (for `--seed` traces)."""
    inner: Callable
    trail: list[Choice] = field(default_factory=list)

    def __call__(self, key: str, options: Options) -> int:
        index = self.inner(key, options)
        self.trail.append(Choice(key, tuple((str(l), float(p)) for l, p in options), index))
        return index
