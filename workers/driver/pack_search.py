"""Bayesian search in packs: Optuna's TPE asked for a pack's worth of trials at once.

:class:`PackSearcher` is the Tune searcher of a packed ``bayes`` sweep. Each time Tune wants a
trial it asks the study for ``size`` configurations in one go (``TPESampler(constant_liar=
True)``: trials still running count as if they had the worst value seen, so one batch does
not crowd one spot), groups them by pack key (an invalid combination is a pack of its own)
and hands Tune one pack per call. When a pack ends, every member's last value is told to the
study (a diverged or failed member as failed), so the next batch learns from all of them.
Members are numbered in the order asked. Tune saves the searcher with its experiment state,
so a resumed driver continues the same study and numbering.
"""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from pydantic import ValidationError
from ray.tune.search import Searcher

from toolbox.packing import pack_key
from workers.packing import MEMBER_STATES, MEMBERS, PACK, Member
from workers.spec import ChoiceParam, FixedParam, Parameter, SweepSpec

_TOLD = frozenset({"completed", "stopped"})
"""Member outcomes whose last value the study learns from (others are failures to it)."""


def distribution(p: Parameter) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a varying parameter."""
    if isinstance(p, ChoiceParam):
        return optuna.distributions.CategoricalDistribution(p.values)
    assert not isinstance(p, FixedParam)
    if p.distribution == "int_uniform":
        return optuna.distributions.IntDistribution(int(p.min), int(p.max))
    return optuna.distributions.FloatDistribution(
        p.min, p.max, log=p.distribution == "log_uniform_values"
    )


class PackSearcher(Searcher):
    """A packed ``bayes`` sweep's search (see the module docstring).

    Args:
        spec: the sweep (``num_trials`` members in all).
        size: members asked per batch (the pack size).
        device: where trials train (part of the pack key).
    """

    def __init__(self, spec: SweepSpec, size: int, device: str) -> None:
        super().__init__()  # no metric for Tune to check: packs report theirs per member
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.size, self.device = spec, max(1, size), device
        sampler = optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True)
        direction = (
            optuna.study.StudyDirection.MAXIMIZE
            if spec.metric.mode == "max"
            else optuna.study.StudyDirection.MINIMIZE
        )
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self.asked: dict[int, int] = {}  # member number -> Optuna trial number
        self.queue: list[list[Member]] = []
        self.packs: dict[str, list[int]] = {}  # Tune trial id -> member numbers

    def suggest(self, trial_id: str) -> dict[Any, Any] | None:
        if not self.queue:
            if len(self.asked) >= self.spec.num_trials:
                return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel
            self.queue = self._ask(min(self.size, self.spec.num_trials - len(self.asked)))
        pack = self.queue.pop(0)
        self.packs[trial_id] = [m.number for m in pack]
        return {PACK: {MEMBERS: [m.as_config() for m in pack]}}

    def _ask(self, count: int) -> list[list[Member]]:
        """``count`` new members, grouped into packs by key."""
        varying = {k: distribution(p) for k, p in self.spec.parameters.items() if p.varies}
        fixed = {k: p.grid_values()[0] for k, p in self.spec.parameters.items() if not p.varies}
        groups: dict[Any, list[Member]] = {}
        for _ in range(count):
            trial = self.study.ask(varying)
            number = len(self.asked) + 1
            self.asked[number] = trial.number
            member = Member(number, {**fixed, **trial.params})
            try:
                cfg = self.spec.trial_config(member.params)
                key: Any = pack_key(cfg.model_copy(update={"device": self.device}))
            except ValidationError:
                key = ("invalid", number)  # alone
            groups.setdefault(key, []).append(member)
        return list(groups.values())

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        states = (result or {}).get(MEMBER_STATES, {})
        for number in self.packs.pop(trial_id, []):
            state = states.get(str(number), {})
            value = state.get("value")
            told = self.asked[number]
            if not error and state.get("status") in _TOLD and value is not None:
                self.study.tell(told, float(value), skip_if_finished=True)
            else:
                self.study.tell(told, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
