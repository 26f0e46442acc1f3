"""The engine: the per-project daemon that owns the running environment.

Its public face is the control API (see `api`); the CLI reaches it through `devenv.client`.
"""
