"""Load devenv.yaml: parse with line numbers, merge personal overrides, interpolate ${VAR},
apply a profile, convert to the typed model and validate, read the services' env files.
Every problem names file:line."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from devenv.config import artifacts
from devenv.config.injected import override_warnings
from devenv.config.interpolate import Lookup, RequiredError, TemplateError, substitute
from devenv.config.migrate import file_version
from devenv.config.model import CURRENT_VERSION, RUNTIME_NAMES, Project
from devenv.config.schema import Issue, build, did_you_mean, dotted
from devenv.config.schema import Path as KeyPath
from devenv.core.errors import ConfigError, Problem
from devenv.core.paths import StateDir, config_file

Where = tuple[str, int]  # (file shown to the user, 1-based line)
# a configuration file holds at most this many values once YAML aliases are expanded: a few
# hundred bytes of nested aliases (a "billion laughs") would otherwise expand to 10^9
MAX_NODES = 200_000
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


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


@dataclass(frozen=True)
class EnvValue:
    """A variable read from an env file, and where."""

    value: str
    where: Where


@dataclass
class Loaded:
    root: Path
    file: Path
    project: Project
    profile: str | None
    source: Source
    warnings: list[str]
    # each service's variables from its env_file list (later files win), interpolated
    env_files: dict[str, dict[str, EnvValue]] = field(default_factory=dict)

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
    return Source(_plain(doc, (), shown, where, [MAX_NODES]), where)


def plain_data(doc: Any, shown: str) -> Any:
    """Parsed YAML as plain dicts and lists (aliases expanded, at most MAX_NODES values; a
    ConfigError naming `shown` beyond)."""
    return _plain(doc, (), shown, {}, [MAX_NODES])


def refuse_aliases(text: str, shown: str) -> None:
    """A ConfigError at the first YAML anchor or alias in `text`: a layer that comes from
    someone else (a config branch) is plain data, and aliases are how a few bytes expand to
    billions of values."""
    try:
        for event in YAML(typ="safe", pure=True).parse(text):
            if getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise ConfigError([Problem(shown, line, "", "YAML anchors and aliases (&name, "
                                           "*name) are not accepted in a shared layer; write "
                                           "the values out")])
    except YAMLError:
        return  # (a syntax error: parsing it says where)


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


def _plain(node: Any, path: KeyPath, shown: str, where: dict[KeyPath, Where],
           budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError([Problem(shown, None, "", f"more than {MAX_NODES} values once YAML "
                                   "aliases are expanded; write the file without nested "
                                   "aliases (&name / *name)")])
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            sub = path + (str(k),)
            if hasattr(node, "lc"):
                where[sub] = (shown, node.lc.key(k)[0] + 1)
            out[str(k)] = _plain(v, sub, shown, where, budget)
        return out
    if isinstance(node, list):
        items = []
        for i, v in enumerate(node):
            sub = path + (i,)
            if hasattr(node, "lc"):
                where[sub] = (shown, node.lc.item(i)[0] + 1)
                if isinstance(v, str):  # a list that a shorthand turns into a mapping
                    where.setdefault(path + (v,), where[sub])
            items.append(_plain(v, sub, shown, where, budget))
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


def read_dotenv(path: Path, shown: str | None = None,
                lookup: Lookup | None = None) -> dict[str, str]:
    """An env file's variables (see read_env_file); none when there is no such file."""
    if not path.is_file():
        return {}
    return {k: v.value for k, v in read_env_file(path, shown or path.name, lookup).items()}


def read_env_file(path: Path, shown: str, lookup: Lookup | None = None,
                  unset: set[str] | None = None) -> dict[str, EnvValue]:
    """KEY=VALUE lines as Compose reads them: `export`, comments, a bare KEY taking the
    caller's value; '…' literal; "…" with escapes (\\n, \\", \\$) and over several lines;
    unquoted up to a ` #` comment. ${VAR} (every form of devenv.config.interpolate, $VAR too)
    reads earlier lines of the file, then `lookup`. A ConfigError lists every problem with
    the file's line; names of unset variables go to `unset`."""
    return parse_env(read_text(path, shown), shown, lookup or (lambda _: None), unset)


def parse_env(text: str, shown: str, lookup: Lookup,
              unset: set[str] | None = None) -> dict[str, EnvValue]:
    values: dict[str, EnvValue] = {}
    problems: list[Problem] = []

    def known(name: str) -> str | None:
        return values[name].value if name in values else lookup(name)

    lines = text.removeprefix("\ufeff").splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].lstrip()
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        name, eq, rest = line.partition("=")
        name = name.strip()
        if not _ENV_KEY.fullmatch(name):
            problems.append(Problem(shown, number, "", f"expected KEY=VALUE, found "
                                    f"'{line.rstrip()[:40]}'"))
            continue
        if not eq:  # a bare KEY: the caller's value, when it has one
            if (inherited := lookup(name)) is not None:
                values[name] = EnvValue(inherited, (shown, number))
            continue
        rest = rest.lstrip()
        quote = rest[:1]
        if quote in ("'", '"'):
            body, end = rest[1:], _closing(rest[1:], quote)
            while end < 0 and i < len(lines):
                body += "\n" + lines[i]
                i += 1
                end = _closing(body, quote)
            if end < 0:
                fix = "close it" + (', or write \\" for a quote inside' if quote == '"' else "")
                problems.append(Problem(shown, number, name,
                                        f"the {quote} that opens the value is never closed; {fix}"))
                continue
            if quote == "'":
                values[name] = EnvValue(body[:end], (shown, number))
                continue
            raw = _unescape(body[:end])
        else:
            raw = re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
        try:
            values[name] = EnvValue(substitute(raw, known, unset=unset), (shown, number))
        except TemplateError as exc:
            problems.append(Problem(shown, number, name, exc.reason))
    if problems:
        raise ConfigError(problems)
    return values


def _closing(body: str, quote: str) -> int:
    """Where the quote that closes a value is (a double quote may be escaped); -1: none."""
    i = body.find(quote)
    while quote == '"' and i > 0 and _escaped(body, i):
        i = body.find(quote, i + 1)
    return i


def _escaped(text: str, i: int) -> bool:
    slashes = len(text[:i]) - len(text[:i].rstrip("\\"))
    return slashes % 2 == 1


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$$"}


def _unescape(text: str) -> str:
    """A double-quoted value's escapes; `\\$` a literal $ (kept as $$ for interpolation)."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


# ${PORT} in devenv.yaml is each instance's own port, put in by the runtime (runtime/base.py),
# never the caller's PORT
RUN_TIME = {"PORT": "${PORT}"}


def interpolate(node: Any, env: Mapping[str, str], path: KeyPath, missing: set[str],
                issues: list[Issue], *, required: bool = True) -> Any:
    """`node` with ${VAR} interpolated in every string (a bare $VAR is left to the service's
    shell). Unset names go to `missing`; a required one missing, or a malformed reference,
    is an Issue at its key path (`required=False`: a string with a required one missing is
    kept as written)."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, path + (k,), missing, issues, required=required)
                for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, path + (i,), missing, issues, required=required)
                for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node
    try:
        return substitute(node, lambda name: RUN_TIME.get(name, env.get(name)), bare=False,
                          unset=missing)
    except TemplateError as exc:
        if required or not isinstance(exc, RequiredError):
            issues.append(Issue(path, exc.reason))
        return node


LOCAL_SHOWN = ".devenv/local.yaml"


def load(root: Path, profile: str | None = None, *, environ: Mapping[str, str] | None = None,
         texts: Mapping[Path, str] | None = None, local_shown: str = LOCAL_SHOWN,
         shared: bool = False) -> Loaded:
    """Load and validate the project at `root`; raise ConfigError listing every problem.

    `texts` stands in for files' contents (to validate an edit before it is written);
    `local_shown` names the personal overrides in problems (a config branch's file).
    `shared`: devenv.yaml alone, as every machine reads it: no personal overrides, no
    artifacts, and ${VAR} reads neither the environment nor .env (only defaults apply)."""
    texts = texts or {}
    file = config_file(root)
    shown = file.name
    source = read_yaml(file, shown, texts.get(file))
    version = file_version(source.data)
    migrated = _older(source, shown, version)
    local = StateDir(root).local_overrides
    over = None
    if not shared and (local in texts or local.is_file()):
        over = read_yaml(local, local_shown, texts.get(local))
        migrated += _older(over, local_shown, version, layer=True)
        merge(source, over.data, over.where)
    if not shared:
        _artifacts(root, source, texts)
    env = {} if shared else _env(root, environ)
    missing: set[str] = set()
    issues: list[Issue] = []
    source.data = interpolate(source.data, env, (), missing, issues, required=not shared)
    _raise(issues, source, shown)
    warnings = [f"${{{name}}} is not set; using an empty string" for name in sorted(missing)]
    warnings += migrated
    project = _build(source, shown, root)
    _check(project, source, shown, root)
    if profile is not None:
        project = apply_profile(project, source, profile, shown, root, over, env, local_shown)
    project = _chosen_runtime(project, env)
    _check_runnable(project, source, shown)
    warnings += [w for name, svc in project.services.items() if svc.is_data
                 for w in svc.settings.warnings(name)]  # a data kind's own cautions
    env_files = _env_files(project, root, env, warnings)
    warnings += override_warnings(project, root, source, shown, env_files)
    return Loaded(root, file, project, profile, source, warnings, env_files)


def _older(source: Source, shown: str, version: int | None, *, layer: bool = False
           ) -> list[str]:
    """A file of an older `version` (or the overrides going with one) read as the current
    version, in memory (config/migrate.py); a warning for each key it changes."""
    from devenv.config.migrate import upgrade_data

    if version is None or not 1 <= version < CURRENT_VERSION:
        return []
    changes = upgrade_data(source.data, version, source.where, mark=not layer)
    return [f"{shown}: {change}; `devenv migrate --confirm` rewrites the file"
            for change in changes]


def _artifacts(root: Path, source: Source, texts: Mapping[Path, str]) -> None:
    """Services run from published artifacts (`.devenv/artifacts.yaml`, written by `devenv
    sync`) get their unpacked copy as their folder."""
    path = root / artifacts.LOCAL_FILE
    if path not in texts and not path.is_file():
        return
    shown = artifacts.LOCAL_FILE
    found = artifacts.parse(read_yaml(path, shown, texts.get(path)).data, shown)
    services = source.data.get("services")
    if found and isinstance(services, dict):
        artifacts.apply(services, found)


def _env_files(project: Project, root: Path, env: Mapping[str, str],
               warnings: list[str]) -> dict[str, dict[str, EnvValue]]:
    """Each service's variables from its env files, in order (later files win); ${VAR} in
    them reads earlier lines, earlier files of the service, then `env`. Every problem of
    every file at once."""
    out: dict[str, dict[str, EnvValue]] = {}
    problems: list[Problem] = []
    unset: dict[str, set[str]] = {}
    for name, svc in project.services.items():
        values: dict[str, EnvValue] = {}

        def lookup(var: str, values: dict[str, EnvValue] = values) -> str | None:
            return values[var].value if var in values else env.get(var)

        for env_file in svc.env_file:
            try:
                values.update(read_env_file(root / env_file, env_file, lookup,
                                            unset.setdefault(env_file, set())))
            except ConfigError as exc:
                problems += [p for p in exc.problems if p not in problems]
        if values:
            out[name] = values
    if problems:
        raise ConfigError(problems)
    warnings += [f"${{{var}}} is not set (in {file}); using an empty string"
                 for file, names in unset.items() for var in sorted(names)]
    return out


def apply_profile(project: Project, source: Source, name: str, shown: str, root: Path,
                  local: Source | None = None, env: Mapping[str, str] | None = None,
                  local_shown: str = LOCAL_SHOWN) -> Project:
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
    if prof.runtime is not None:
        variant.data["runtime"] = prof.runtime
    if prof.env:
        env_where: dict[KeyPath, Where] = {
            ("env", k): source.locate(base + ("env", k), shown) for k in prof.env}
        for svc in variant.data.get("services", {}):
            merge(variant, {"env": dict(prof.env)}, env_where, ("services", svc))
    if local is not None:
        issues: list[Issue] = []
        data = interpolate(local.data, _env(root) if env is None else env, (), set(), issues)
        _raise(issues, local, local_shown)
        merge(variant, data, local.where)
    result = _build(variant, shown)
    _check(result, variant, shown, root)
    return result


RUNTIME_VAR = "DEVENV_RUNTIME"  # `up --runtime NAME` sets it for that `up`


def _chosen_runtime(project: Project, env: Mapping[str, str]) -> Project:
    """The project under the runtime $DEVENV_RUNTIME names, when it names one."""
    chosen = env.get(RUNTIME_VAR, "")
    if not chosen:
        return project
    if chosen not in RUNTIME_NAMES:
        raise ConfigError([Problem(f"${RUNTIME_VAR}", None, "runtime",
                                   f"no runtime '{chosen}'; runtimes: "
                                   + ", ".join(RUNTIME_NAMES))])
    return dataclasses.replace(project, runtime=chosen)  # type: ignore[arg-type]  # (checked)


def _check_runnable(project: Project, source: Source, shown: str) -> None:
    """A service with only an image needs the docker runtime; a container cannot depend on
    a server of the local runtime (mixed runtimes: refused, with the fix)."""
    problems = []
    for name, svc in project.services.items():
        if svc.kind == "process" and svc.command is None and not project.in_container(name):
            file, line = source.locate(("services", name), shown)
            problems.append(Problem(file, line, f"services.{name}", "has no `command` to run "
                                    f"on the {project.runtime} runtime; give it one, or run "
                                    "it as a container (runtime: docker, or up --runtime "
                                    "docker)"))
        elif project.runtime == "docker" and project.in_container(name):
            for dep in svc.depends_on:
                target = project.services[dep]
                if target.port is None or project.in_container(dep):
                    continue  # (a job's completion crosses no network)
                file, line = source.locate(("services", name, "depends_on", dep), shown)
                problems.append(Problem(
                    file, line, f"services.{name}.depends_on.{dep}",
                    f"{name} runs as a container and {dep} on this machine, where it listens "
                    f"on 127.0.0.1 only, which a container cannot reach; run both on the same "
                    f"runtime: give {dep} an `image:` or `build:`, or run {name} locally "
                    "(runtime: local)"))
    if problems:
        raise ConfigError(problems)


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
    """What ${VAR} reads: the environment, over the project's .env file (whose own ${VAR}s
    read its earlier lines, then the environment)."""
    environ = os.environ if environ is None else environ
    return {**read_dotenv(root / ".env", ".env", environ.get), **environ}
