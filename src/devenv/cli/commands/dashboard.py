"""`devenv dashboard`: print the URL of the running engine's web dashboard."""

from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out
from devenv.client import Client
from devenv.core.errors import DevenvError


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    client = Client(root)
    if not client.running():
        raise DevenvError(f"no environment is running for {root}, so there is no dashboard",
                          hint="start it with `devenv up --monitoring`")
    link = client.status(resources=False).dashboard
    if link is None:
        raise DevenvError("the engine serves no dashboard yet (it starts with the first `up`)",
                          hint="run `devenv up --monitoring`")
    out.print(link.url, markup=False)
    if out.is_terminal:
        err.print("[dim]open it in a browser on this machine; the token in it changes each time "
                  "the engine starts[/]")
    return 0
