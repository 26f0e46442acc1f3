"""Sharing an environment through the project's git repository: config branches (the
override layer as commits under `refs/devenv/config/`) and published services (packed
folders under `refs/devenv/artifacts/`). Git runs through `git.Git` only, with argv lists
and deadlines; the working tree and the index are never touched."""
