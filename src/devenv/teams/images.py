"""Published images: a service that runs as a container on the docker runtime is published as
its image, built (`build:`) or taken as it is (`image:`), tagged
`<registry.url>/<namespace>/<service>:<version, else the image id's first 12 hex>` and pushed
with docker-py; the artifact records it pinned by the digest the registry answered
(`repo@sha256:...`), which the docker runtime pulls on a teammate's machine."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from devenv.config.artifacts import Artifact
from devenv.config.load import Loaded
from devenv.core.errors import ConfigError, DevenvError, Problem, UsageError

API_TIMEOUT = 300.0  # seconds for one Engine API call (a push of a large layer included)
REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")  # host[:port]
PATH_PART = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*")  # one component of a repository's path
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pushed:
    artifact: Artifact
    reference: str  # the tag pushed (repo:tag)
    seconds: float  # build/tag and push


def wants_image(loaded: Loaded, service: str) -> bool:
    """Whether `publish` makes the service an image: it runs as a container on docker."""
    svc = loaded.project.services.get(service)
    return (svc is not None and not svc.is_data and loaded.project.runtime == "docker"
            and svc.containerized)


def slug(name: str) -> str:
    """A name as one component of an image repository's path (lower case, [a-z0-9._-])."""
    cut = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-._")
    return cut or "project"


def repository(loaded: Loaded, service: str) -> str:
    """`<url>/<namespace>/<service>`; a ConfigError naming devenv.yaml's key when the
    registry is not set or not usable."""
    reg = loaded.project.registry
    shown = loaded.file.name
    if reg.url is None:
        raise UsageError(
            f"{service} runs as a container on the docker runtime: `devenv publish` pushes its "
            "image to a registry, and none is set",
            hint="set one: `registry: {url: \"127.0.0.1:5000\"}` in devenv.yaml (or devenv "
            "config set registry.url 127.0.0.1:5000)")
    problems = []
    if not REGISTRY.fullmatch(reg.url):
        problems.append(_problem(loaded, ("registry", "url"), f"{reg.url!r} is not a "
                                 "registry's host[:port] (lower case, no scheme or path), "
                                 "e.g. 127.0.0.1:5000"))
    namespace = reg.namespace if reg.namespace is not None else slug(
        loaded.project.name or loaded.root.name)
    if not all(PATH_PART.fullmatch(p) for p in namespace.split("/")):
        problems.append(_problem(loaded, ("registry", "namespace"), f"{namespace!r} is not a "
                                 "repository path (lower-case letters, digits, . _ - and /)"))
    if problems:
        raise ConfigError(problems, hint=f"fix registry: in {shown}")
    return f"{reg.url}/{namespace}/{service}"


def _problem(loaded: Loaded, path: tuple[str, ...], message: str) -> Problem:
    file, line = loaded.source.locate(path, loaded.file.name)
    return Problem(file, line or None, ".".join(path), message)


def publish(loaded: Loaded, service: str, version: str = "") -> Pushed:
    """Build or take the service's image, tag and push it; its artifact pinned by digest."""
    from devenv.runtime.docker import connect  # (docker-py: only when an image is published)

    repo = repository(loaded, service)
    svc = loaded.project.services[service]
    started = time.monotonic()
    api = connect(API_TIMEOUT)
    if svc.build is not None:
        image_id = _build(api, loaded, service)
    else:
        assert svc.image is not None
        image_id = _present(api, service, svc.image)
    tag = version or image_id.removeprefix("sha256:")[:12]
    api.tag(image_id, repo, tag)
    digest = _push(api, service, repo, tag, loaded.project.registry.url or "")
    art = Artifact(service, digest.removeprefix("sha256:"), os.path.normpath(svc.path), version,
                   image=f"{repo}@{digest}")
    return Pushed(art, f"{repo}:{tag}", time.monotonic() - started)


def _build(api: Any, loaded: Loaded, service: str) -> str:
    """The image built from the service's `build:` (context, dockerfile); its id."""
    build = loaded.project.services[service].build
    assert build is not None
    context = loaded.root / build.context
    if not context.is_dir():
        raise UsageError(f"{service}: build context {context} is not a folder",
                         hint=f"check services.{service}.build")
    said: list[str] = []
    image_id = ""
    try:
        for chunk in api.build(path=str(context), dockerfile=build.dockerfile, rm=True,
                               decode=True):
            if "stream" in chunk:
                said += str(chunk["stream"]).splitlines()
            if "error" in chunk:
                raise DevenvError(f"{service}: the image build failed: "
                                  f"{str(chunk['error']).strip()}; nothing was published",
                                  details=said[-20:], hint=f"check {context}'s Dockerfile")
            found = (chunk.get("aux") or {}).get("ID")
            if isinstance(found, str):
                image_id = found
    except DevenvError:
        raise
    except Exception as exc:
        raise DevenvError(f"{service}: the image build failed: {exc}",
                          details=said[-20:]) from exc
    if not image_id:  # (an Engine that does not say it: the last "Successfully built")
        built = [line.split()[-1] for line in said if line.startswith("Successfully built")]
        if not built:
            raise DevenvError(f"{service}: the image build did not say which image it made",
                              details=said[-20:])
        image_id = built[-1]
    return image_id


def _present(api: Any, service: str, image: str) -> str:
    """The id of `image`, pulled first when it is not on this machine."""
    from docker.errors import NotFound

    try:
        return str(api.inspect_image(image)["Id"])
    except NotFound:
        pass
    try:
        api.pull(image)
        return str(api.inspect_image(image)["Id"])
    except Exception as exc:
        raise DevenvError(f"{service}: image {image!r} is not on this machine and pulling it "
                          f"failed: {exc}", hint="pull or build it first") from exc


def _push(api: Any, service: str, repo: str, tag: str, url: str) -> str:
    """Push `repo:tag`; the digest (sha256:...) the registry gave its manifest."""
    digest = ""
    try:
        for chunk in api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise _push_failed(service, repo, tag, url, str(chunk["error"]).strip())
            found = (chunk.get("aux") or {}).get("Digest")
            if isinstance(found, str):
                digest = found
    except DevenvError:
        raise
    except Exception as exc:
        raise _push_failed(service, repo, tag, url, str(exc)) from exc
    if not DIGEST.fullmatch(digest):
        raise DevenvError(f"{service}: the registry at {url} did not give {repo}:{tag} a "
                          "digest; nothing was recorded", hint="check the registry's logs")
    return digest


def _push_failed(service: str, repo: str, tag: str, url: str, why: str) -> DevenvError:
    if "HTTP response to HTTPS client" in why:
        hint = (f"the registry at {url} speaks plain HTTP: add it to the Docker Engine's "
                "insecure-registries (/etc/docker/daemon.json), or serve it over HTTPS")
    else:
        hint = (f"start a registry at {url} (Debian: apt-get install docker-registry, then "
                "docker-registry serve CONFIG with `http: {addr: ...}` set to it; or docker "
                "run -d -p 5000:5000 registry:2), or point registry.url in devenv.yaml at one "
                "that runs; a registry with a login: docker login first")
    return DevenvError(f"{service}: cannot push {repo}:{tag} to the registry at {url}: {why}; "
                       "nothing was recorded", hint=hint)
