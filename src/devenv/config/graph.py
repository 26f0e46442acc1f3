"""The dependency graph: closure of a selection, start order, cycles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from devenv.core.errors import UsageError

if TYPE_CHECKING:
    from devenv.config.load import Loaded


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps.get(node, ()):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state and (found := visit(node)):
            return found
    return None


def closure(deps: Mapping[str, Sequence[str]], selected: Iterable[str]) -> set[str]:
    """The selected services plus everything they depend on, transitively."""
    out: set[str] = set()
    todo = list(selected)
    while todo:
        node = todo.pop()
        if node not in out:
            out.add(node)
            todo.extend(deps.get(node, ()))
    return out


def start_order(deps: Mapping[str, Sequence[str]], only: Iterable[str] | None = None) -> list[str]:
    """Dependencies before dependents; ties keep declaration order."""
    keep = set(deps if only is None else only)
    done: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> None:
        if node in seen or node not in keep:
            return
        seen.add(node)
        for dep in deps.get(node, ()):
            visit(dep)
        done.append(node)

    for node in deps:
        visit(node)
    return done


def select(loaded: Loaded, services: Iterable[str] = ()) -> tuple[str, ...]:
    """Services asked for (or the profile's, or all), plus their dependencies, in start order."""
    project = loaded.project
    asked = list(services)
    if not asked and loaded.profile:
        asked = list(project.profiles[loaded.profile].services)
    for name in asked:
        if name not in project.services:
            from devenv.config.schema import did_you_mean

            raise UsageError(
                f"no service '{name}'{did_you_mean(name, project.services)}",
                hint="services: " + ", ".join(project.services),
            )
    deps = {n: list(s.depends_on) for n, s in project.services.items()}
    chosen = closure(deps, asked) if asked else set(project.services)
    return tuple(start_order(deps, chosen))
