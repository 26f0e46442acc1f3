"""Load devenv.yaml: parse with line numbers, merge personal overrides, interpolate ${VAR},
apply a profile, convert to the typed model and validate. Every problem names file:line."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from devenv.config.model import CURRENT_VERSION, Project
from devenv.config.schema import Issue, build, did_you_mean, dotted
from devenv.config.schema import Path as KeyPath
from devenv.core.errors import ConfigError, Problem
from devenv.core.paths import StateDir, config_file

Where = tuple[str, int]  # (file shown to the user, 1-based line)
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


@dataclass
class Source:
    """Plain data read from YAML, with where each key path was written."""

    data: dict[str, Any]
    where: dict[KeyPath, Where] = field(default_factory=dict)

    def locate(self, path: KeyPath, fallback: str) -> Where:
        for n in range(len(path), -1, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return (fallback, 0)


@dataclass
class Loaded:
    root: Path
    file: Path
    project: Project
    profile: str | None
    source: Source
    warnings: list[str]

    @property
    def name(self) -> str:
        return self.project.name or self.root.name


def read_text(path: Path, shown: str) -> str:
    """A text file of the configuration; one that cannot be read, or is not UTF-8, is a
    ConfigError naming it (and the line of the first byte that is not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(shown, None, "", f"cannot read: {exc.strerror}")]) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, byte = not_utf8(data, exc)
        raise ConfigError([Problem(shown, line, "", f"not UTF-8 text (byte 0x{byte:02x}); "
                                   "save the file as UTF-8")]) from exc


def not_utf8(data: bytes, exc: UnicodeDecodeError) -> tuple[int, int]:
    """Where UTF-8 decoding failed: (1-based line, the byte)."""
    return data.count(b"\n", 0, exc.start) + 1, data[exc.start]


def read_yaml(path: Path, shown: str, text: str | None = None) -> Source:
    """Parse a YAML file into plain dicts/lists plus a map of key path -> (file, line)."""
    text = read_text(path, shown) if text is None else text
    doc = parse_yaml(text, shown)
    where: dict[KeyPath, Where] = {(): (shown, 1)}
    return Source(_plain(doc, (), shown, where), where)


def parse_yaml(text: str, shown: str, yaml: YAML | None = None) -> Any:
    """A YAML document that must be a mapping (empty: an empty one), parsed by `yaml`
    (default: round-trip, which keeps lines); a ConfigError naming file:line otherwise."""
    try:
        doc = (yaml or YAML(typ="rt")).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or exc.context or "not valid YAML"
        raise ConfigError([Problem(shown, line, "", f"YAML syntax: {reason}")]) from exc
    except YAMLError as exc:
        raise ConfigError([Problem(shown, None, "", f"YAML syntax: {exc}")]) from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError([Problem(shown, 1, "", "the file must be a mapping of keys")])
    return doc


def _plain(node: Any, path: KeyPath, shown: str, where: dict[KeyPath, Where]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            sub = path + (str(k),)
            if hasattr(node, "lc"):
                where[sub] = (shown, node.lc.key(k)[0] + 1)
            out[str(k)] = _plain(v, sub, shown, where)
        return out
    if isinstance(node, list):
        items = []
        for i, v in enumerate(node):
            sub = path + (i,)
            if hasattr(node, "lc"):
                where[sub] = (shown, node.lc.item(i)[0] + 1)
                if isinstance(v, str):  # a list that a shorthand turns into a mapping
                    where.setdefault(path + (v,), where[sub])
            items.append(_plain(v, sub, shown, where))
        return items
    if node is not None and not isinstance(node, bool | int | float | str):
        return str(node)  # dates and other YAML types: keep the text
    return node


def merge(base: Source, over: Mapping[str, Any], over_where: Mapping[KeyPath, Where],
          at: KeyPath = (), from_: KeyPath = ()) -> None:
    """Deep-merge `over` into `base.data` at `at`; mappings merge, anything else replaces."""
    target: Any = base.data
    for part in at:
        target = target.setdefault(part, {}) if isinstance(target, dict) else {}
    for k, v in over.items():
        src, dst = from_ + (k,), at + (k,)
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(base, v, over_where, dst, src)
        else:
            target[k] = copy.deepcopy(v)
            for p, w in over_where.items():
                if p[: len(src)] == src:
                    base.where[dst + p[len(src):]] = w
        if src in over_where:
            base.where[dst] = over_where[src]


def read_dotenv(path: Path, shown: str | None = None) -> dict[str, str]:
    """KEY=VALUE lines; `export`, comments and quotes as in Compose's .env. A file that is
    not UTF-8 is a ConfigError naming it (`shown`, default: its name)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in read_text(path, shown or path.name).removeprefix("\ufeff").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name.strip()] = value
    return values


def interpolate(node: Any, env: Mapping[str, str], path: KeyPath, missing: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate(v, env, path + (k,), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, path + (i,), missing) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-" and not value:
            return default or ""
        if op == "-" and value is None:
            return default or ""
        if value is None:
            missing.add(name)
            return ""
        return value

    return _VAR.sub(sub, node)


def load(root: Path, profile: str | None = None, *, environ: Mapping[str, str] | None = None,
         texts: Mapping[Path, str] | None = None) -> Loaded:
    """Load and validate the project at `root`; raise ConfigError listing every problem.

    `texts` stands in for files' contents (to validate an edit before it is written)."""
    texts = texts or {}
    file = config_file(root)
    shown = file.name
    source = read_yaml(file, shown, texts.get(file))
    local = StateDir(root).local_overrides
    over = None
    if local in texts or local.is_file():
        over = read_yaml(local, ".devenv/local.yaml", texts.get(local))
        merge(source, over.data, over.where)
    env = _env(root, environ)
    missing: set[str] = set()
    source.data = interpolate(source.data, env, (), missing)
    warnings = [f"${{{name}}} is not set; using an empty string" for name in sorted(missing)]
    project = _build(source, shown, root)
    _check(project, source, shown, root)
    if profile is not None:
        project = apply_profile(project, source, profile, shown, root, over)
    warnings += [w for name, svc in project.services.items() if svc.is_data
                 for w in svc.settings.warnings(name)]  # a data kind's own cautions
    return Loaded(root, file, project, profile, source, warnings)


def apply_profile(project: Project, source: Source, name: str, shown: str, root: Path,
                  local: Source | None = None) -> Project:
    """The project as the profile changes it; personal overrides still have the last word
    (devenv.yaml < profile < .devenv/local.yaml)."""
    if name not in project.profiles:
        hint = did_you_mean(name, project.profiles)
        known = ", ".join(project.profiles) or "none declared"
        raise ConfigError(
            [Problem(shown, None, "profiles", f"no profile '{name}'{hint}; known: {known}")]
        )
    prof = project.profiles[name]
    variant = Source(copy.deepcopy(source.data), dict(source.where))
    base = ("profiles", name)
    for svc, over in prof.overrides.items():
        if svc not in variant.data.get("services", {}):
            where = source.locate(base + ("overrides", svc), shown)
            hint = did_you_mean(svc, variant.data.get("services", {}))
            msg = f"overrides unknown service '{svc}'{hint}"
            raise ConfigError([Problem(where[0], where[1], dotted(base + ("overrides", svc)), msg)])
        if isinstance(over, dict):
            merge(variant, over, source.where, ("services", svc), base + ("overrides", svc))
    if prof.env:
        env_where: dict[KeyPath, Where] = {
            ("env", k): source.locate(base + ("env", k), shown) for k in prof.env}
        for svc in variant.data.get("services", {}):
            merge(variant, {"env": dict(prof.env)}, env_where, ("services", svc))
    if local is not None:
        merge(variant, interpolate(local.data, _env(root), (), set()), local.where)
    result = _build(variant, shown)
    _check(result, variant, shown, root)
    return result


def _build(source: Source, shown: str, root: Path | None = None) -> Project:
    project, issues = build(Project, source.data)
    if project is None and root is not None:
        issues += _partial_semantics(source.data, issues, root)
    if project is not None and project.version != CURRENT_VERSION:
        issues.append(Issue(("version",), f"this devenv reads version {CURRENT_VERSION}, the "
                            f"file says {project.version}; run `devenv migrate` or upgrade devenv"))
    _raise(issues, source, shown)
    assert isinstance(project, Project)
    return project


def _partial_semantics(data: dict[str, Any], issues: list[Issue], root: Path) -> list[Issue]:
    """All errors at once: with some keys broken, still check references, cycles and ports
    among the services that did read correctly (names are checked against all of them)."""
    from devenv.config.validate import semantic_issues

    raw_services = data.get("services")
    if not isinstance(raw_services, dict):
        return []
    broken = {str(i.path[1]) for i in issues if len(i.path) >= 2 and i.path[0] == "services"}
    bad_top = {str(i.path[0]) for i in issues if i.path and i.path[0] != "services"}
    partial = {k: v for k, v in data.items() if k not in bad_top}
    partial["services"] = {n: s for n, s in raw_services.items() if n not in broken}
    partial.setdefault("version", CURRENT_VERSION)
    project, _ = build(Project, partial)
    if project is None:
        return []
    return semantic_issues(project, root, known=set(raw_services))


def _check(project: Project, source: Source, shown: str, root: Path) -> None:
    from devenv.config.validate import semantic_issues

    _raise(semantic_issues(project, root), source, shown)


def _raise(issues: list[Issue], source: Source, shown: str) -> None:
    if not issues:
        return
    problems = []
    for issue in issues:
        file, line = source.locate(issue.path, shown)
        problems.append(Problem(file, line or None, dotted(issue.path), issue.message))
    problems.sort(key=lambda p: (p.file != shown, p.file, p.line or 0))
    raise ConfigError(problems)


def _env(root: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ${VAR} reads: the environment, over the project's .env file."""
    return {**read_dotenv(root / ".env"), **(os.environ if environ is None else environ)}
