"""Scenario files: TOML → validated :class:`Scenario`, with dotted overrides and human errors.

Every problem in a file is reported at once, one line each: the file, the field path, the value,
and what is allowed (with a did-you-mean for misspelt keys and plug-in names).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from simulator.registry import BadParams, UnknownName, all_registries, did_you_mean, import_plugins
from simulator.scenario.schema import Scenario

__all__ = [
    "PLUGIN_FIELDS",
    "SCENARIO_CHECKS",
    "Problem",
    "ScenarioError",
    "apply_overrides",
    "load_scenario",
    "scenario_check",
    "scenario_from_dict",
]


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ScenarioError(ValueError):
    """A scenario that cannot be run; ``problems`` lists every reason."""

    def __init__(self, source: str | None, problems: list[Problem]) -> None:
        self.source, self.problems = source, problems
        where = source or "scenario"
        lines = [f"{where}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


#: Where a scenario names a plug-in: (path of the name, path of its params, registry kind, is a list).
#: Checked on the raw file, so plug-in problems are reported together with schema problems.
PLUGIN_FIELDS: list[tuple[str, str, str, bool]] = [
    ("data.dataset", "data.params", "dataset", False),
    ("data.partitioner.name", "data.partitioner.params", "partitioner", False),
    ("model.name", "model.params", "model", False),
    ("attacks.backdoor.name", "attacks.backdoor.params", "client attack", False),
    ("attacks.inversion.name", "attacks.inversion.params", "inversion attack", False),
    ("defenses.aggregator.name", "defenses.aggregator.params", "aggregator", False),
    ("defenses.client", "params", "client defense", True),
    ("defenses.server", "params", "server defense", True),
    ("compression.name", "compression.params", "compressor", False),
]


def _get(data: Any, path: str) -> Any:
    cur = data
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _check_plugin(kind: str, name: Any, params: Any, name_path: str, params_path: str) -> list[Problem]:
    if not isinstance(name, str):
        return []
    reg = all_registries()[kind]
    try:
        reg.validate(name, params if isinstance(params, Mapping) else {})
    except UnknownName as e:
        return [
            Problem(
                name_path,
                f"unknown {kind} {name!r}{did_you_mean(name, e.known)}; allowed: {', '.join(e.known)}",
            )
        ]
    except BadParams as e:
        return [Problem(f"{params_path}.{field}", msg) for field, msg in e.problems]
    return []


def _plugin_problems(data: Mapping[str, Any]) -> list[Problem]:
    import_plugins()
    problems: list[Problem] = []
    for name_path, params_path, kind, is_list in PLUGIN_FIELDS:
        if is_list:
            items = _get(data, name_path)
            for i, item in enumerate(items if isinstance(items, list) else []):
                if isinstance(item, Mapping):
                    base = f"{name_path}[{i}]"
                    problems += _check_plugin(
                        kind, item.get("name"), item.get("params"), f"{base}.name", f"{base}.params"
                    )
        else:
            problems += _check_plugin(
                kind, _get(data, name_path), _get(data, params_path), name_path, params_path
            )
    return problems


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model at ``loc`` (the parent of an unknown key)."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        cands = [ann, *get_args(ann)]
        nxt = None
        for c in cands:
            for cc in [c, *get_args(c)]:
                if isinstance(cc, type) and issubclass(cc, BaseModel):
                    nxt = cc
                    break
            if nxt:
                break
        if nxt is None:
            return []
        cur = nxt
    return list(getattr(cur, "model_fields", {}))


def _pydantic_problems(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        path = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc).replace(".[", "[")
        if e["type"] == "extra_forbidden":
            allowed = [k for k in _allowed_keys(Scenario, loc[:-1]) if k != "source"]
            key = str(loc[-1])
            msg = f"unknown key{did_you_mean(key, allowed)}; allowed keys here: {', '.join(allowed)}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] != "missing" and "input" in e and not isinstance(e["input"], dict):
                msg = f"{msg} (got {e['input']!r})"
        out.append(Problem(path, msg))
    return out


def leakage_unused_problems(s: Scenario) -> list[Problem]:
    """A leakage experiment (one victim, one payload, no federation) refuses the sections it would ignore."""
    if s.kind != "leakage":
        return []
    out: list[Problem] = []
    why = "a leakage experiment attacks one client's payload and runs no federated rounds"
    for name, section, fix in (
        (
            "federation",
            s.federation,
            "set the victim's training in [leakage] (lr, local_steps, batch_size, protocol)",
        ),
        ("evaluation", s.evaluation, "remove it"),
        ("attacks.plan", s.attacks.plan, "remove it"),
    ):
        if section.model_fields_set:
            keys = ", ".join(sorted(section.model_fields_set))
            out.append(Problem(name, f"{keys}: {why}, so [{name}] would be ignored; {fix}"))
    if s.attacks.backdoor is not None:
        out.append(
            Problem("attacks.backdoor", f'{why}; a backdoor needs a federated run (kind = "federated")')
        )
    agg = s.defenses.aggregator
    if agg.name != "fedavg" or agg.params:
        out.append(
            Problem(
                "defenses.aggregator",
                f"{agg.name!r}: {why}, so no aggregator runs; attack an aggregate in a federated run instead",
            )
        )
    if s.defenses.server:
        out.append(
            Problem("defenses.server", f"{why}, so no server defense runs; remove [[defenses.server]]")
        )
    return out


ScenarioCheck = Callable[[Scenario], list[Problem]]

#: Whole-scenario checks (cross-section rules), registered with :func:`scenario_check` where they are defined,
#: like plug-ins; :func:`scenario_from_dict` imports every plug-in package first, so none is ever missing.
SCENARIO_CHECKS: list[ScenarioCheck] = []


def scenario_check(check: ScenarioCheck) -> ScenarioCheck:
    """Register a whole-scenario check (a decorator; idempotent). It returns every problem it finds."""
    if check not in SCENARIO_CHECKS:
        SCENARIO_CHECKS.append(check)
    return check


def memory_format_problems(s: Scenario) -> list[Problem]:
    """``simulation.memory_format`` applies to the plain local-training loop; explicit channels-last is
    refused where that loop does not train: record-level DP (Opacus's loop), the batched vectorised kernels
    (one grouped kernel for every client) and a leakage experiment (its own victim training)."""
    if s.simulation.memory_format != "channels_last":
        return []
    field, head = "simulation.memory_format", "'channels_last' "
    if s.kind == "leakage":
        why = "is ignored by a leakage experiment, whose victim trains in [leakage]; remove it"
        return [Problem(field, head + why)]
    if s.privacy.level == "record":
        why = "is ignored by record-level DP, which trains through Opacus in the contiguous format"
        return [Problem(field, head + why + "; use 'auto' or 'contiguous'")]
    if s.simulation.vectorise_kernels == "batched":
        why = "cannot be honoured by vectorise_kernels = 'batched' (one grouped kernel for every client)"
        return [Problem(field, head + why + "; use vectorise_kernels = 'exact' or memory_format = 'auto'")]
    return []


scenario_check(leakage_unused_problems)
scenario_check(memory_format_problems)


def scenario_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> Scenario:
    """Validate a dict (parsed TOML) into a Scenario, raising :class:`ScenarioError` with all problems."""
    problems = _plugin_problems(data)
    try:
        s = Scenario.model_validate({**data, "source": source})
    except ValidationError as err:
        raise ScenarioError(source, _pydantic_problems(err) + problems) from None
    if not problems:
        import_plugins()  # registers the plug-in packages' checks (privacy, compression, inversion)
        for check in SCENARIO_CHECKS:
            problems += check(s)
    if problems:
        raise ScenarioError(source, problems)
    return s


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], *, source: str | None = None
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as TOML, else taken as strings)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(source, [Problem("--set", f"{item!r} is not of the form key.path=value")])
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ScenarioError(source, [Problem("--set", f"{item!r} has an empty key")])
        cur = out
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(source, [Problem(key, f"{p!r} is a value, not a table")])
            cur = nxt
        cur[parts[-1]] = _parse_value(value.strip())
    return out


def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Read, override and validate a scenario file."""
    p = Path(path)
    if not p.exists():
        raise ScenarioError(str(p), [Problem("", "file not found")])
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(str(p), [Problem("", f"not valid TOML: {e}")]) from None
    return scenario_from_dict(apply_overrides(data, overrides, source=str(p)), source=str(p))
