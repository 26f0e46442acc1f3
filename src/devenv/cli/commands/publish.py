"""`devenv publish --service S`: pack the service as it is now (after its build step) into a
content-addressed artifact in the repository (a container on the docker runtime: its image,
pushed to the registry), record it in the current config branch, and optionally push both."""

from __future__ import annotations

import argparse

from devenv.cli.commands._common import load_project
from devenv.cli.output import err, out
from devenv.config.artifacts import render
from devenv.core.errors import UsageError
from devenv.teams import artifacts, images, refs
from devenv.teams.branches import MANIFEST, Branches


def run(args: argparse.Namespace) -> int:
    service = refs.check_name(args.service, "service")
    remote = refs.check_remote(args.remote)
    loaded = load_project(args)
    branches = Branches(loaded.root)
    current = branches.current()
    if current is None or not branches.exists(current):
        raise UsageError("no current config branch to record the artifact in",
                         hint="create one first: devenv config branch NAME")
    if args.version is not None:
        refs.check_name(args.version, "version")
    what = ""
    if images.wants_image(loaded, service):  # a container on docker: its image, pushed
        err.print(f"building and pushing {service}'s image…")
        pushed = images.publish(loaded, service, args.version or "")
        art = pushed.artifact
        what = f"image {art.image} (pushed as {pushed.reference} in {pushed.seconds:.1f} s)"
    else:
        if loaded.project.services.get(service) and loaded.project.services[service].watch.build:
            err.print(f"building {service}…")
            artifacts.build(loaded, service)
        art, left_out = artifacts.pack(branches.git, loaded, service, args.version or "",
                                       include_secrets=args.include_secrets)
        what = f"artifact {art.digest[:12]} (from {art.source}/)"
        if left_out:
            err.print(f"left out of the artifact, as they look like secrets: "
                      f"{', '.join(left_out)} (a service that needs one gets it another "
                      "way, e.g. an env_file outside its folder; --include-secrets packs "
                      "them)", markup=False)
    content = branches.read(current)
    recorded = content.artifacts(f"{current}:{MANIFEST}")
    recorded[service] = art
    commit = branches.save(current, content.overrides, render(recorded),
                           f"devenv publish {service} {art.digest[:12]}")
    label = f" {art.version}" if art.version else ""
    out.print(f"published {service}{label}: {what}, recorded in {current} ({commit[:12]})",
              markup=False)
    if args.push:
        branches.push(current, remote)
        out.print(f"pushed {current} and its artifacts to {remote}", markup=False)
    return 0
