"""`devenv docs generate`: the environment as Markdown for the team, from the model alone.

Pure but for reading the project (its env files, a dev server's package.json): the same
configuration gives the same text, byte for byte (sorted, no times), so a CI job can tell a
stale file (`--check`). `environment.py` the page, `mermaid.py` the dependency graph,
`reference.py` the configuration reference (from `config.schema.json_schema`, the one
declaration of every key), `markdown.py` the escaping.
"""

from devenv.docsgen.environment import render

__all__ = ["render"]
