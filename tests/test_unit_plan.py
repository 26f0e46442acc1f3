"""Unit tests of `convergence_plan`: what `devenv up` does to each service, from the desired
plan and what runs. Pure: no loop, no runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from devenv.config import load
from devenv.engine.reconciler import Action, convergence_plan
from devenv.engine.service import ServiceRunner
from devenv.plan import ServicePlan, service_plan
from fakes import health_check, make_plan, plan_of


@dataclass
class RunnerStub:
    """What convergence_plan reads of a ServiceRunner: its plan, desired count and state."""

    plan: ServicePlan
    desired: int
    state: str = "healthy"


def running(*stubs: RunnerStub) -> dict[str, ServiceRunner]:
    return {s.plan.name: cast(ServiceRunner, s) for s in stubs}


def kinds(actions: list[Action]) -> dict[str, tuple[str, int]]:
    return {a.service: (a.kind, a.replicas) for a in actions}


def test_services_not_running_yet_are_created_with_their_replicas() -> None:
    plan = plan_of(make_plan("db"), make_plan("api", replicas=2, depends_on={"db": "healthy"}))
    actions = convergence_plan(plan, {}, {})
    assert actions == [Action("db", "create", 1), Action("api", "create", 2)]  # start order


def test_an_unchanged_service_is_kept_so_up_is_idempotent() -> None:
    api = make_plan("api", replicas=2)
    actions = convergence_plan(plan_of(api), running(RunnerStub(api, desired=2)), {})
    assert actions == [Action("api", "keep", 2)]


def real_hash(root: Path, service_yaml: str) -> str:
    """The config hash the real loader and `service_plan` give one service."""
    (root / "devenv.yaml").write_text("version: 1\nservices:\n  api:\n" + service_yaml)
    return service_plan(load(root), "api").config_hash


def test_scaling_or_watch_settings_do_not_change_the_hash_but_the_command_does(
        tmp_path: Path) -> None:
    base = real_hash(tmp_path, "    command: python app.py\n")
    assert real_hash(tmp_path, "    command: python app.py\n    replicas: 3\n") == base
    assert real_hash(tmp_path, "    command: python app.py\n    watch: false\n") == base
    assert real_hash(tmp_path, "    command: python app.py --debug\n") != base


def test_a_changed_config_replaces_the_service() -> None:
    old = make_plan("api", command=("python", "app.py"))
    new = make_plan("api", command=("python", "app.py", "--debug"))
    assert old.config_hash != new.config_hash
    actions = convergence_plan(plan_of(new), running(RunnerStub(old, desired=1)), {})
    assert actions == [Action("api", "replace", 1)]


def test_a_changed_health_check_replaces_the_service() -> None:
    old = make_plan("api", health=health_check(start_period=60))
    new = make_plan("api", health=health_check(start_period=5))
    actions = convergence_plan(plan_of(new), running(RunnerStub(old, desired=1)), {})
    assert kinds(actions) == {"api": ("replace", 1)}


def test_a_changed_replica_count_scales_without_new_instances() -> None:
    old = make_plan("api", replicas=1)
    new = make_plan("api", replicas=3)
    actions = convergence_plan(plan_of(new), running(RunnerStub(old, desired=1)), {})
    assert actions == [Action("api", "scale", 3)]


def test_a_stopped_or_crashed_service_is_scaled_back_up() -> None:
    api, web = make_plan("api"), make_plan("web", replicas=2)
    actions = convergence_plan(
        plan_of(api, web),
        running(RunnerStub(api, desired=1, state="crashed"),
                RunnerStub(web, desired=2, state="stopped")), {})
    assert kinds(actions) == {"api": ("scale", 1), "web": ("scale", 2)}


def test_a_starting_or_unhealthy_service_with_the_right_count_is_left_alone() -> None:
    api, web = make_plan("api"), make_plan("web")
    actions = convergence_plan(
        plan_of(api, web),
        running(RunnerStub(api, desired=1, state="starting"),
                RunnerStub(web, desired=1, state="unhealthy")), {})
    assert kinds(actions) == {"api": ("keep", 1), "web": ("keep", 1)}


def test_services_gone_from_the_config_are_removed_first() -> None:
    api, old_worker = make_plan("api"), make_plan("worker")
    actions = convergence_plan(
        plan_of(api),
        running(RunnerStub(api, desired=1), RunnerStub(old_worker, desired=1)), {})
    assert actions == [Action("worker", "remove", 0), Action("api", "keep", 1)]


def test_running_services_outside_the_selection_are_not_touched() -> None:
    db, api, web = make_plan("db"), make_plan("api"), make_plan("web")
    plan = plan_of(db, api, web, selected=("db", "api"))  # `devenv up api`
    actions = convergence_plan(plan, running(RunnerStub(web, desired=1)), {})
    assert actions == [Action("db", "create", 1), Action("api", "create", 1)]


def test_a_count_set_by_devenv_scale_wins_over_the_config() -> None:
    api = make_plan("api", replicas=1)
    plan = plan_of(api)
    # scaled to 4 earlier: a later `up` keeps 4 rather than shrinking back to the config's 1
    assert convergence_plan(plan, running(RunnerStub(api, desired=4)), {"api": 4}) == [
        Action("api", "keep", 4)]
    # and a service recreated (or replaced) comes back at the scaled count
    assert convergence_plan(plan, {}, {"api": 4}) == [Action("api", "create", 4)]
    changed = make_plan("api", replicas=1, command=("app", "--v2"))
    assert convergence_plan(plan_of(changed), running(RunnerStub(api, desired=4)),
                            {"api": 4}) == [Action("api", "replace", 4)]
