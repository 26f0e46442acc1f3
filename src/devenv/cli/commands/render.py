"""`devenv render`: the project as Kubernetes manifests, for any cluster; optionally checked
against a version's schemas (`--validate`) and for removed or deprecated APIs
(`--check-deprecations`, the service's own manifests too, by file:line)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from devenv.cli.commands._common import load_project
from devenv.cli.output import err, out, warn
from devenv.core.atomic import write_atomic
from devenv.core.errors import UsageError


def run(args: argparse.Namespace) -> int:
    from devenv.kube.render import built_image, no_registry, render, to_yaml, unpushable
    from devenv.plan import make_plan

    loaded = load_project(args, args.profile)
    unknown = [s for s in args.services if s not in loaded.project.services]
    if unknown:
        raise UsageError(f"no service {unknown[0]!r}",
                         hint="services: " + ", ".join(loaded.project.services))
    target = args.kubernetes or loaded.project.kubernetes.version
    rendered = render(loaded, make_plan(loaded), args.services or None)
    for name in unpushable(loaded):  # (a cluster that exists pulls built images from one)
        if not args.services or name in args.services:
            warn(no_registry(name).message + f"; its image stays {built_image(loaded.name, name)}")
    folder = Path(args.output) if args.output else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot make {folder}: {exc.strerror or exc}",
                             hint="give -o a folder you can write") from exc
    # each manifest's place: (file shown, line) for messages
    places: list[tuple[str, int, dict[str, object]]] = []
    texts: list[str] = []
    for item in rendered:
        name = f"{item.service}.yaml"
        text, line = "", 1
        for manifest in item.manifests:
            doc = to_yaml([manifest])
            text += ("---\n" if text else "") + doc
            shown = str(folder / name) if folder else f"(rendered) {item.service}"
            places.append((shown, line if folder else 0, manifest))
            line = text.count("\n") + 2
        for supplied in item.supplied:
            text += ("---\n" if text else "") + f"# from {supplied.file}\n" + to_yaml(
                [supplied.manifest])
            places.append((supplied.file, supplied.line, supplied.manifest))
        if folder is not None:
            write_atomic(folder / name, text, mode=0o644)
        else:
            texts.append(f"# {item.service}\n{text}")
    if folder is None and not (args.check_deprecations or args.validate):
        out.print("---\n".join(texts), end="", markup=False)
    elif folder is not None:
        err.print(f"wrote {len(rendered)} files to {folder}/ (Kubernetes {target})")
    code = 0
    if args.validate:
        code = max(code, _validate(places, target))
    if args.check_deprecations:
        code = max(code, _deprecations(places, target))
    return code


def _where(file: str, line: int) -> str:
    return f"{file}:{line}" if line else file


def _validate(places: list[tuple[str, int, dict[str, object]]], target: str) -> int:
    from devenv.kube.validate import validate

    bad = 0
    for file, line, manifest in places:
        found = validate(manifest, target)
        if found is None:
            continue
        if found.unchecked:
            warn(f"{_where(file, line)}: {found.kind} {found.name}: no schema in Kubernetes "
                 f"{target} (a custom resource): not checked")
            continue
        bad += 1
        at = f" at {found.path}" if found.path else ""
        err.print("[red]invalid[/]: " + escape(f"{_where(file, line)}: {found.kind} "
                                                 f"{found.name}{at}: {found.message}"))
    if not bad:
        err.print(f"[green]ok[/]: {len(places)} manifests fit Kubernetes {target}'s schemas")
    return 1 if bad else 0


def _deprecations(places: list[tuple[str, int, dict[str, object]]], target: str) -> int:
    from devenv.kube.deprecations import check

    removed = 0
    findings = [f for file, line, m in places if (f := check(m, target, _where(file, line)))]
    for finding in findings:
        if finding.status == "removed":
            removed += 1
            err.print("[red]removed[/]: " + escape(finding.line(target)))
        else:
            warn(finding.line(target))
    if not findings:
        err.print(f"[green]ok[/]: no removed or deprecated APIs for Kubernetes {target} in "
                  f"{len(places)} manifests")
    return 1 if removed else 0
