"""Published services: a service's folder, after its build step, packed into a git tree (its
id is the artifact's digest), kept as a commit under `refs/devenv/artifacts/<service>/
<digest>`, and unpacked into `.devenv/artifacts/<digest>/` where it runs. Packing uses a
private index file, so the repository's own index and working tree are never touched."""

from __future__ import annotations

import asyncio
import fnmatch
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from devenv.config.artifacts import ARTIFACTS_DIR, Artifact
from devenv.config.load import Loaded
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import private_dir
from devenv.plan import command_argv, exec_spec, service_plan
from devenv.runtime import get_runtime
from devenv.teams import refs
from devenv.teams.git import Git

# left out of an artifact: devenv's own state, and Python's byte-code caches
EXCLUDED = (":(exclude).devenv", ":(exclude,glob)**/__pycache__/**", ":(exclude).git")
# files that hold secrets, left out of an artifact unless `publish --include-secrets`: an
# artifact is pushed where the whole team (and whoever reads the remote) can read it
SECRET_FILES = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".pgpass",
                ".npmrc", ".pypirc", "*.kdbx", "credentials", "credentials.*", "*secret*")
NOT_SECRET = (".env.example", ".env.sample", ".env.template", "*.pub")
# an artifact's commit is the same for the same tree, wherever it is made: pushing it again
# is "up to date", never a conflict
FIXED = {"GIT_AUTHOR_NAME": "devenv", "GIT_AUTHOR_EMAIL": "devenv@localhost",
         "GIT_COMMITTER_NAME": "devenv", "GIT_COMMITTER_EMAIL": "devenv@localhost",
         "GIT_AUTHOR_DATE": "1970-01-01T00:00:00+0000",
         "GIT_COMMITTER_DATE": "1970-01-01T00:00:00+0000"}


def build(loaded: Loaded, service: str) -> str | None:
    """Run the service's build step (`watch.build`) through its runtime, in its folder with
    its environment; its output, or None when it declares none. A failure raises."""
    svc = loaded.project.services[service]
    if svc.watch.build is None:
        return None
    plan = service_plan(loaded, service)
    runtime = get_runtime(plan.runtime, loaded.root)
    argv = command_argv(svc.watch.build)
    result = asyncio.run(runtime.run(exec_spec(plan), argv, plan.run_timeout))
    if result.code != 0:
        raise DevenvError(f"{service}: its build step failed (exit {result.code}); nothing "
                          "was published", details=result.output.splitlines()[-15:],
                          hint=f"fix services.{service}.watch.build, then publish again")
    return result.output


def pack(git: Git, loaded: Loaded, service: str, version: str = "", *,
         include_secrets: bool = False) -> tuple[Artifact, list[str]]:
    """The service's folder as it is now, packed and stored (idempotent: the same content
    gives the same digest and ref), and the secret-looking files left out of it (none with
    `include_secrets`)."""
    refs.check_name(service, "service")
    if service not in loaded.project.services:
        raise UsageError(f"no service '{service}'",
                         hint="services: " + ", ".join(loaded.project.services))
    svc = loaded.project.services[service]
    if svc.is_data:
        raise UsageError(f"'{service}' is a data service; only application services are "
                         "published (share its data with `devenv snapshot export`)")
    if svc.path.startswith(ARTIFACTS_DIR):
        raise UsageError(f"'{service}' runs from a published artifact here, not from source",
                         hint="publish it from a checkout that has its source")
    folder = loaded.root / svc.path
    left_out: list[str] = []
    tree = tree_of(git, folder, left_out=None if include_secrets else left_out)
    ref = refs.artifact_ref(service, tree)
    if git.resolve(ref) is None:
        commit = git.text("commit-tree", tree, "-m", f"devenv artifact {service}", env=FIXED)
        git.update_ref(ref, commit)
    return Artifact(service, tree, os.path.normpath(svc.path), version), left_out


def secret_file(path: str) -> bool:
    """A file named like one that holds secrets (SECRET_FILES), by its name."""
    name = path.rsplit("/", 1)[-1].lower()
    if any(fnmatch.fnmatchcase(name, p) for p in NOT_SECRET):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in SECRET_FILES)


def tree_of(git: Git, folder: Path, left_out: list[str] | None = None) -> str:
    """The git tree of every file under `folder` (ignored ones too: a build's output is what
    runs), written through a private index. With `left_out`, files that look like secrets
    are not packed, and their paths are added to it."""
    with tempfile.TemporaryDirectory(prefix="devenv-pack-") as tmp:
        env = {"GIT_DIR": str(git.git_dir), "GIT_WORK_TREE": str(folder),
               "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git.run("add", "--all", "--force", "--", ".", *EXCLUDED, env=env, cwd=folder)
        _refuse_outside_links(git, folder, env)
        if left_out is not None:
            files = git.run("ls-files", "-z", env=env, cwd=folder).stdout.decode()
            secret = sorted(f for f in files.split("\0") if f and secret_file(f))
            if secret:
                git.run("update-index", "--force-remove", "-z", "--stdin", env=env,
                        cwd=folder, input="".join(f + "\0" for f in secret).encode())
                left_out += secret
        return git.text("write-tree", env=env, cwd=folder)


def _refuse_outside_links(git: Git, folder: Path, env: dict[str, str]) -> None:
    """A UsageError for a symbolic link that points outside `folder` (absolute, or up out
    of it): it would not be there where the artifact is unpacked, and unpacking refuses it."""
    staged = git.run("ls-files", "-s", "-z", env=env, cwd=folder).stdout.decode()
    bad = []
    for entry in staged.split("\0"):
        meta, _, path = entry.partition("\t")
        if not meta.startswith("120000 "):
            continue
        target = os.readlink(folder / path)
        inside = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            bad.append(f"{path} -> {target}")
    if bad:
        raise UsageError(f"{folder.name}/ has links to outside its folder, which an artifact "
                         "cannot hold: " + ", ".join(bad) + "; nothing was published",
                         hint="copy the file in instead of linking it (e.g. in the build "
                         "step), or link within the folder")


def fetch(git: Git, remote: str, wanted: Iterable[Artifact]) -> None:
    """Fetch the artifacts not here yet, and check each one's content is its digest."""
    wanted = [a for a in wanted if a.is_tree]  # (an image is pulled by the docker runtime)
    missing = [a for a in wanted if not git.ok("cat-file", "-e", f"{a.digest}^{{tree}}")]
    if missing:
        git.fetch(refs.check_remote(remote),
                  [refs.same(refs.artifact_ref(a.service, a.digest)) for a in missing])
    for art in wanted:
        if not git.ok("cat-file", "-e", f"{art.digest}^{{tree}}"):
            raise DevenvError(f"{art.service}: artifact {art.digest[:12]} is not on {remote}",
                              hint="its publisher pushes it: devenv publish --service "
                              f"{art.service} --push")


def unpack(git: Git, root: Path, art: Artifact) -> Path:
    """The artifact's folder, `.devenv/artifacts/<digest>/` (made once: its name is its
    content). Unpacked beside it first, then renamed, so a folder there is always whole. An
    image artifact has no folder: the service's own is returned."""
    if not art.is_tree:
        return root / art.source
    dest = root / art.folder
    if dest.is_dir():
        return dest
    parent = private_dir(root / ARTIFACTS_DIR)
    data = git.run("archive", "--format=tar", art.digest).stdout
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".unpack-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
    except tarfile.FilterError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DevenvError(f"{art.service}: artifact {art.digest[:12]} was not unpacked: {exc} "
                          "(outside its folder)",
                          hint=f"ask its publisher to publish {art.service} again without "
                          "that link (devenv publish now refuses it)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest
