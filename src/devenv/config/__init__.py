"""The model of devenv.yaml, its loading and validation. Imports nothing above it."""

from devenv.config.load import Loaded, load
from devenv.config.model import Project, Service

__all__ = ["Loaded", "Project", "Service", "load"]
