"""Small shared pieces: errors, state-dir paths, atomic writes."""

from devenv.core.errors import ConfigError, DevenvError, Problem
from devenv.core.paths import StateDir, find_project_root

__all__ = ["ConfigError", "DevenvError", "Problem", "StateDir", "find_project_root"]
