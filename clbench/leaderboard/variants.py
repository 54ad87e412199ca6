"""Agent variants: an agent with constructor arguments, as a sweep names, runs and files it.

A spec names one variant: an agent (its registered name, ``module:Class`` or
``path/to/file.py:Class``), optionally followed by arguments in brackets, each ``key=value``
read as ``clbench run --agent-arg`` reads it (JSON, else a plain string)::

    independent[dtype=int4,delta=true]
    naive[lr=0.05,epochs=5]

``clbench leaderboard run --agents`` takes a comma-separated list of specs; a comma inside
brackets, braces or a JSON string belongs to its spec (``a[sizes=[64,32]],naive`` is two
specs). Quote the list in a shell, where ``[`` is a glob character.

A variant is its canonical agent name (:func:`clbench.agent.canonical_agent_name`) and its
non-default arguments (:func:`clbench.agent.non_default_arguments`), so
``independent[dtype=float32]`` is ``independent``. Its runs get exactly those arguments as
agent kwargs (the result files record them; the built tables show them in the row's
arguments), and its results folder is that identity, readable and filesystem-safe:
``independent__delta-true__dtype-int4`` (arguments in name order; without arguments the
plain name, ``independent``). A spec naming an unknown agent or argument, or a value the
agent's constructor refuses, is refused before any run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clbench.agent import (
    agent_arguments,
    canonical_agent_name,
    load_agent_class,
    non_default_arguments,
)
from clbench.cli import UsageError, assignment_text, parse_assignments
from clbench.leaderboard.suites import folder_name

SYNTAX = "give name or name[key=value,...], e.g. independent[dtype=int4,delta=true]"
PAIRS = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class AgentSpec:
    """One agent variant of a sweep; made by :func:`resolve_spec`."""

    agent: str  # as given: what each run imports (registered name, module:Class, file.py:Class)
    name: str  # canonical
    kwargs: dict[str, Any] = field(default_factory=dict)  # non-default arguments, by name

    @property
    def folder(self) -> str:
        return agent_folder(self.name, self.kwargs)

    @property
    def label(self) -> str:
        return spec_label(self.name, self.kwargs)


def spec_label(agent: str, arguments: dict[str, Any]) -> str:
    """A variant as a spec that names it: ``independent[delta=true,dtype=int4]``."""
    if not arguments:
        return agent
    return f"{agent}[{','.join(assignment_text(k, v) for k, v in arguments.items())}]"


def agent_folder(agent: str, arguments: dict[str, Any] | None = None) -> str:
    """The results folder of an agent variant: its canonical name (``:`` written ``__``)
    and then its non-default ``arguments`` (see :func:`clbench.leaderboard.suites.folder_name`)."""
    name = canonical_agent_name(agent).replace(":", "__").replace("/", "_")
    return folder_name(name, arguments or {})


def split_specs(text: str, what: str = "--agents") -> list[str]:
    """``text`` split at the commas outside brackets, braces and double-quoted strings;
    empty parts are dropped. Unbalanced brackets or quotes are refused."""
    parts, start, open_, quoted, escaped = [], 0, [], False, False
    for index, char in enumerate(text):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in PAIRS:
            open_.append(PAIRS[char])
        elif char in PAIRS.values():
            if not open_ or open_.pop() != char:
                raise ValueError(f"{what} {text!r}: unbalanced {char!r} at character "
                                 f"{index + 1}; {SYNTAX}")
        elif char == "," and not open_:
            parts.append(text[start:index])
            start = index + 1
    if open_ or quoted:
        raise ValueError(f"{what} {text!r}: unclosed {open_[-1] if open_ else 'quote'!r}; "
                         f"{SYNTAX}")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"independent[dtype=int4,delta=true]"`` -> ``("independent", {"dtype": "int4",
    "delta": True})``, the values parsed as ``clbench run --agent-arg`` parses them."""
    what = f"--agents {text!r}"
    agent, bracket, rest = text.strip().partition("[")
    agent = agent.strip()
    if not agent or "]" in agent or (bracket and not rest.endswith("]")):
        raise ValueError(f"{what} is not an agent spec; {SYNTAX}")
    pairs = split_specs(rest[:-1], what) if bracket else []
    if bracket and not pairs:
        raise ValueError(f"{what} has empty brackets; {SYNTAX}")
    keys = [pair.partition("=")[0] for pair in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"{what} sets {', '.join(twice)} more than once; give each once")
    try:
        return agent, parse_assignments(pairs, f"{what}:")
    except UsageError as error:
        raise ValueError(f"{error}; {SYNTAX}") from None


def resolve_spec(text: str) -> AgentSpec:
    """The variant ``text`` names, checked: the agent exists, every argument is one of its
    constructor's (:func:`clbench.agent.agent_arguments`) and the constructor accepts the
    values (it is built once, on CPU, where there are arguments)."""
    agent, kwargs = parse_spec(text)
    try:
        cls = load_agent_class(agent)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--agents {text!r}: {error}") from None
    name = canonical_agent_name(agent)
    defaults = agent_arguments(cls)
    unknown = [key for key in kwargs if key not in defaults]
    if unknown:
        accepted = ", ".join(assignment_text(key, value) for key, value in defaults.items())
        raise ValueError(f"--agents {text!r}: {name} has no argument {', '.join(unknown)}; "
                         f"its arguments and their defaults: {accepted or 'none'} (`clbench "
                         "list` shows every agent's)")
    if kwargs:
        try:
            cls(device="cpu", **kwargs)
        except Exception as error:  # whatever the constructor raises on a bad value
            raise ValueError(f"--agents {text!r}: {name} refuses these arguments: {error}"
                             ) from None
    return AgentSpec(agent, name, non_default_arguments(kwargs, defaults))


def resolve_specs(texts: Sequence[str]) -> list[AgentSpec]:
    """The variants of a list of specs, each checked by :func:`resolve_spec`; two specs of the
    same variant (or of one results folder) are refused."""
    specs: list[AgentSpec] = []
    seen: dict[str, tuple[str, AgentSpec]] = {}
    for text in texts:
        spec = resolve_spec(text)
        if spec.folder in seen:
            first, other = seen[spec.folder]
            same = (other.name, other.kwargs) == (spec.name, spec.kwargs)
            raise ValueError(
                f"--agents names {first!r} and {text!r}: " + (
                    f"both are {spec.label} (an argument equal to its default does not make "
                    "a variant); name it once" if same else
                    f"both would write to the folder {spec.folder}; give one of them "
                    "another value or leave it out"))
        seen[spec.folder] = (text, spec)
        specs.append(spec)
    return specs
