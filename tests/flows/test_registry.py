"""Registry promotion on a real sqlite MLflow registry, including crashes between steps."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src import locking, registry
from src.model_io import load_classifier
from src.monitoring.card import MODEL_CARD_TAG
from tests.helpers.flows import PrefectServer, TinyStore, project_env

_names = itertools.count()


class SimulatedCrash(RuntimeError):
    pass


class CrashingClient(MlflowClient):
    """An MlflowClient that dies right before the n-th call of ``method`` (a process crash)."""

    def __init__(self, uri: str, method: str, nth: int = 1) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self._method, self._left = method, nth

    def __getattribute__(self, item: str) -> Any:
        attr = super().__getattribute__(item)
        if item == object.__getattribute__(self, "_method"):

            def crash(*args: Any, **kwargs: Any) -> Any:
                self._left -= 1
                if self._left <= 0:
                    raise SimulatedCrash(item)
                return attr(*args, **kwargs)

            return crash
        return attr


@pytest.fixture
def name() -> str:
    return f"model-{next(_names)}"


@pytest.fixture
def client(tiny_store: TinyStore) -> MlflowClient:
    return registry.get_client(tiny_store.tracking_uri)


def _candidate(client: MlflowClient, store: TinyStore, name: str, **tags: Any) -> str:
    mv = registry.register_candidate(
        client,
        name,
        model_uri=store.model_uri,
        run_id=store.run_id,
        tags={"data_md5": "abc", "split_hash": "s1", "test_accuracy": 0.93, **tags},
    )
    return str(mv.version)


def _run(client: MlflowClient, store: TinyStore, name: str, passed: bool) -> str:
    version = _candidate(client, store, name)
    registry.promote_candidate(client, name, version, passed=passed, reasons=["r"])
    return version


def _stage(client: MlflowClient, name: str, version: str) -> str:
    return str(client.get_model_version(name, version).current_stage)


def _assert_one_production(client: MlflowClient, name: str, expected: str | None) -> None:
    assert registry.production_consistent(client, name)
    production = registry.current_production(client, name)
    assert (str(production.version) if production else None) == expected
    in_stage = [
        str(mv.version)
        for mv in client.search_model_versions(f"name = '{name}'")
        if mv.current_stage == "Production"
    ]
    assert in_stage == ([expected] if expected else [])


def test_no_model_means_no_production(client: MlflowClient, name: str) -> None:
    assert registry.current_production(client, name) is None
    assert registry.reconcile_production(client, name).production_version is None


def test_candidate_is_tagged_pending_then_passed_and_promoted(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _candidate(client, tiny_store, name)
    mv = client.get_model_version(name, version)
    assert mv.tags["validation_status"] == "pending"
    assert mv.tags["data_md5"] == "abc" and mv.tags["split_hash"] == "s1"
    assert mv.tags["test_accuracy"] == "0.93"
    assert mv.run_id == tiny_store.run_id
    result = registry.promote_candidate(
        client, name, version, passed=True, reasons=["accuracy ok"], details={"p": 0.5}
    )
    assert result.promoted and result.production_version == version
    mv = client.get_model_version(name, version)
    assert mv.tags["validation_status"] == "passed"
    assert mv.tags["gate_reasons"] == "accuracy ok"
    assert registry.PRODUCTION_ALIAS in mv.aliases
    _assert_one_production(client, name, version)
    # The served URI resolves to a loadable classifier.
    classifier = load_classifier(f"models:/{name}@production")
    assert len(classifier.class_names) == 10


def test_failed_candidate_is_not_promoted(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    first = _run(client, tiny_store, name, passed=True)
    second = _candidate(client, tiny_store, name)
    result = registry.promote_candidate(
        client, name, second, passed=False, reasons=["accuracy 0.5 is below the floor 0.9"]
    )
    assert not result.promoted
    assert result.production_version == first == result.previous_production_version
    mv = client.get_model_version(name, second)
    assert mv.tags["validation_status"] == "failed"
    assert "below the floor" in mv.tags["gate_reasons"]
    _assert_one_production(client, name, first)


def test_passing_candidates_archive_the_previous_one(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    versions = [_run(client, tiny_store, name, passed=True) for _ in range(3)]
    _assert_one_production(client, name, versions[-1])
    assert [_stage(client, name, v) for v in versions[:-1]] == ["Archived", "Archived"]


def test_promote_refuses_unvalidated_versions(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _candidate(client, tiny_store, name)
    with pytest.raises(registry.RegistryError, match="validation_status='pending'"):
        registry.promote(client, name, version)


@pytest.mark.parametrize(
    ("method", "nth", "promoted"),
    [
        # crash after register, before any gate tag: stays pending, old Production kept
        ("set_model_version_tag", 1, False),
        # crash after the reasons tag, before the status tag
        ("set_model_version_tag", 2, False),
        # crash after "passed", before the alias moved
        ("set_registered_model_alias", 1, False),
        # crash after the alias moved, before the stage transition: the alias wins
        ("transition_model_version_stage", 1, True),
    ],
)
def test_crash_between_steps_is_repaired(
    tiny_store: TinyStore, client: MlflowClient, name: str, method: str, nth: int, promoted: bool
) -> None:
    old = _run(client, tiny_store, name, passed=True)
    crashing = CrashingClient(tiny_store.tracking_uri, method, nth)
    new = _candidate(client, tiny_store, name)
    with pytest.raises(SimulatedCrash):
        registry.promote_candidate(crashing, name, new, passed=True, reasons=["ok"])
    # The next flow run starts with a reconcile.
    registry.reconcile_production(client, name)
    _assert_one_production(client, name, new if promoted else old)
    # ... and a later successful run still works.
    newest = _run(client, tiny_store, name, passed=True)
    _assert_one_production(client, name, newest)


def test_reconcile_repairs_two_versions_in_production(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    # A half-done stage transition (or a hand edit in the UI): both in Production.
    old = _run(client, tiny_store, name, passed=True)
    new = _run(client, tiny_store, name, passed=True)
    client.transition_model_version_stage(name, old, "Production")
    assert not registry.production_consistent(client, name)
    report = registry.reconcile_production(client, name)
    assert report.production_version == new
    assert any(f"version {old} was also in Production" in a for a in report.actions)
    _assert_one_production(client, name, new)


def test_reconcile_sets_a_missing_alias(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _run(client, tiny_store, name, passed=True)
    client.delete_registered_model_alias(name, registry.PRODUCTION_ALIAS)
    fallback = registry.current_production(client, name)  # found by stage
    assert fallback is not None and str(fallback.version) == version
    report = registry.reconcile_production(client, name)
    assert "alias 'production' was missing" in report.actions[0]
    _assert_one_production(client, name, version)
    assert registry.reconcile_production(client, name).actions == []


# Where a promotion can die, and what Production must be afterwards: the alias is the source of
# truth, so a crash before the alias moved keeps the old version, any later one gives the new.
# (method, nth call, passed, does the new version end in Production?) - every entry fires.
CRASH_POINTS = [
    ("set_model_version_tag", 1, False, False),  # before the reasons tag
    ("set_model_version_tag", 2, False, False),  # before the "failed" status tag
    ("set_model_version_tag", 1, True, False),
    ("set_model_version_tag", 2, True, False),  # before "passed"
    ("set_registered_model_alias", 1, True, False),  # before the alias moved
    ("transition_model_version_stage", 1, True, True),  # alias moved, stage not yet
    ("set_registered_model_tag", 1, True, True),  # promoted, history entry not yet written
]


def test_random_runs_with_crashes_keep_one_production(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    """Every crash point twice, in a shuffled order among clean runs; each must really fire."""
    rng = random.Random(7)
    plan: list[tuple[str, int, bool, bool] | None] = [*CRASH_POINTS, *CRASH_POINTS, *[None] * 5]
    rng.shuffle(plan)
    expected: str | None = None
    for step in plan:
        registry.reconcile_production(client, name)  # what every flow run does first
        _assert_one_production(client, name, expected)
        version = _candidate(client, tiny_store, name)
        if step is None:
            passed = rng.random() < 0.7
            registry.promote_candidate(client, name, version, passed=passed, reasons=["x"])
            expected = version if passed else expected
            continue
        method, nth, passed, lands = step
        crashing = CrashingClient(tiny_store.tracking_uri, method, nth)
        with pytest.raises(SimulatedCrash):  # the crash point must really be reached
            registry.promote_candidate(crashing, name, version, passed=passed, reasons=["x"])
        expected = version if lands else expected
    registry.reconcile_production(client, name)
    _assert_one_production(client, name, expected)


# --- concurrent flows -----------------------------------------------------------------------


class InterleavingClient(MlflowClient):
    """Runs ``hook`` once, right after the n-th ``search_model_versions`` call returns: the
    moment reconcile has read the alias and the stages but not yet written anything."""

    def __init__(self, uri: str, hook: Any, nth: int = 1) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self._hook, self._left = hook, nth

    def search_model_versions(self, *args: Any, **kwargs: Any) -> Any:
        result = super().search_model_versions(*args, **kwargs)
        self._left -= 1
        if self._left == 0:
            self._hook()
        return result


def test_promotion_inside_another_flows_reconcile_replayed(
    client: MlflowClient,
    tiny_store: TinyStore,
    name: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving that once left the alias on v3 and every version Archived: flow A's
    reconcile reads "Production = v2", flow B promotes v3, flow A archives what is not v2.
    Both hold the registry lock as the flows do; B must wait for A, and the end state is v3.
    A waits until B has been refused the lock (or, without a lock, has finished), so a slow B
    cannot pass for a blocked one."""
    lock_dir = tmp_path / "locks"
    _run(client, tiny_store, name, passed=True)
    v2 = _run(client, tiny_store, name, passed=True)
    v3 = _candidate(client, tiny_store, name)
    finished: list[str] = []

    def flow_b() -> None:
        with registry.registry_lock(tiny_store.tracking_uri, lock_dir):
            b_client = registry.get_client(tiny_store.tracking_uri)
            registry.promote_candidate(
                b_client, name, v3, passed=True, reasons=["ok"], actor="flow B"
            )
        finished.append("B")

    thread = threading.Thread(target=flow_b)
    b_refused = threading.Event()
    real_flock = locking.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        try:
            real_flock(fd, operation)
        except BlockingIOError:
            if threading.current_thread() is thread:
                b_refused.set()  # B asked for the lock while A holds it
            raise

    monkeypatch.setattr(locking.fcntl, "flock", flock)

    def b_promotes_now() -> None:
        thread.start()
        deadline = time.monotonic() + 120
        while not b_refused.is_set() and thread.is_alive():
            assert time.monotonic() < deadline, "flow B neither asked for the lock nor finished"
            time.sleep(0.01)

    a_client = InterleavingClient(tiny_store.tracking_uri, b_promotes_now)
    with registry.registry_lock(tiny_store.tracking_uri, lock_dir):
        registry.reconcile_production(a_client, name, actor="flow A")
        a_done_before_b = not finished
    thread.join(timeout=60)
    assert finished == ["B"]
    _assert_one_production(client, name, v3)
    assert a_done_before_b, "flow B promoted while flow A held the registry lock"
    last = registry.production_history(client, name)[-1]
    assert (last.action, last.from_version, last.to_version, last.by) == (
        "promotion",
        v2,
        v3,
        "flow B",
    )


def test_reconcile_survives_the_interleaving_even_without_the_lock(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    """Belt and braces: a writer that ignores the lock (a hand edit in the UI) lands inside
    reconcile; reconcile sees the alias moved and repairs towards it instead of archiving it."""
    _run(client, tiny_store, name, passed=True)
    _run(client, tiny_store, name, passed=True)
    v3 = _candidate(client, tiny_store, name)

    def promote_v3() -> None:
        registry.promote_candidate(client, name, v3, passed=True, reasons=["ok"])

    registry.reconcile_production(InterleavingClient(tiny_store.tracking_uri, promote_v3), name)
    _assert_one_production(client, name, v3)


def test_promotion_is_a_compare_and_swap(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    """The gate compared the candidate with v1; another run promoted v2 meanwhile: the
    promotion is refused, nothing is recorded, and it goes through against v2."""
    v1 = _run(client, tiny_store, name, passed=True)
    candidate = _candidate(client, tiny_store, name)
    v2 = _run(client, tiny_store, name, passed=True)
    with pytest.raises(registry.ChampionMoved, match=f"from v{v1} to v{v2}"):
        registry.promote_candidate(
            client,
            name,
            candidate,
            passed=True,
            reasons=["not worse than v1"],
            expected_production=v1,
            check_expected=True,
        )
    assert client.get_model_version(name, candidate).tags["validation_status"] == "pending"
    _assert_one_production(client, name, v2)
    result = registry.promote_candidate(
        client,
        name,
        candidate,
        passed=True,
        reasons=["not worse than v2"],
        expected_production=v2,
        check_expected=True,
    )
    assert result.promoted and result.previous_production_version == v2
    _assert_one_production(client, name, candidate)


def test_the_registry_lock_excludes_another_process(tiny_store: TinyStore, tmp_path: Any) -> None:
    path = registry.registry_lock_path(tiny_store.tracking_uri, tmp_path)
    assert path.name == "mlflow.db.lock"  # beside the sqlite registry, shared by checkouts
    code = (
        "import sys, time; from pathlib import Path; from src.locking import file_lock\n"
        "with file_lock(Path(sys.argv[1]), timeout_s=0.5): pass\n"
    )
    with registry.registry_lock(tiny_store.tracking_uri, tmp_path):
        held = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
        )
    assert held.returncode != 0 and "LockTimeout" in held.stderr
    assert f"held by process {os.getpid()}" in held.stderr
    free = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert free.returncode == 0, free.stderr


# --- rollback and history -------------------------------------------------------------------


def test_rollback_goes_back_to_the_replaced_version_and_is_recorded(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    v1 = _run(client, tiny_store, name, passed=True)
    v2 = _run(client, tiny_store, name, passed=True)
    failed = _run(client, tiny_store, name, passed=False)
    change = registry.rollback(client, name, reason="v2 misreads sandals", actor="user ann")
    assert (change.from_version, change.to_version) == (v2, v1)
    _assert_one_production(client, name, v1)
    with pytest.raises(registry.RegistryError, match="validation_status='failed'"):
        registry.rollback(client, name, to=failed, reason="try the failed one")
    _assert_one_production(client, name, v1)
    with pytest.raises(registry.RegistryError, match="needs a reason"):
        registry.rollback(client, name, to=v2, reason=" ")
    registry.rollback(client, name, to=v2, reason="fixed upstream", actor="user bob")
    _assert_one_production(client, name, v2)
    history = registry.production_history(client, name)
    assert [(c.action, c.from_version, c.to_version) for c in history] == [
        ("promotion", None, v1),
        ("promotion", v1, v2),
        ("rollback", v2, v1),
        ("rollback", v1, v2),
    ]
    assert history[2].by == "user ann" and history[2].reason == "v2 misreads sandals"
    assert history[0].reason.startswith("gate passed: ")
    assert all(c.at.endswith("+00:00") for c in history)


def test_repairs_are_recorded(client: MlflowClient, tiny_store: TinyStore, name: str) -> None:
    version = _run(client, tiny_store, name, passed=True)
    client.delete_registered_model_alias(name, registry.PRODUCTION_ALIAS)
    registry.reconcile_production(client, name, actor="flow run x")
    last = registry.production_history(client, name)[-1]
    assert (last.action, last.from_version, last.to_version, last.by) == (
        "repair",
        None,
        version,
        "flow run x",
    )
    assert "alias 'production' was missing" in last.reason
    registry.reconcile_production(client, name)  # nothing to repair: nothing recorded
    assert registry.production_history(client, name)[-1] == last


def test_cli_rollback_and_history(tiny_store: TinyStore, tmp_path: Any) -> None:
    name = f"cli-{next(_names)}"
    client = registry.get_client(tiny_store.tracking_uri)
    v1 = _run(client, tiny_store, name, passed=True)
    v2 = _run(client, tiny_store, name, passed=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tiny_store.tracking_uri,
        "MLFLOW_REGISTERED_MODEL_NAME": name,
        "PATHS_ROOT": str(tmp_path),
        "REGISTRY_ACTOR": "user carol",
        "PROFILE": "",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "src.registry", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    done = cli("rollback", "--reason", "bad answers on boots")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Rolled back Production from v{v2} to v{v1}." in done.stdout
    _assert_one_production(client, name, v1)
    refused = cli("rollback", "--to", v1, "--reason", "again")
    assert refused.returncode == 1 and f"Version {v1} is already Production" in refused.stderr
    shown = cli("history")
    assert shown.returncode == 0, shown.stderr
    last = shown.stdout.strip().splitlines()[-1]
    assert "rollback" in last and "user carol: bad answers on boots" in last
    assert last.split()[2:4] == [v2, v1]


# --- three real flows at once -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_three_train_flows_at_once_end_with_one_production(
    prefect_server: PrefectServer, tmp_path: Path, tiny_store: TinyStore
) -> None:
    """Three flow processes on one sqlite registry and one Prefect server, released together
    after registering: exactly one Production at the end, the alias on it, and every
    promotion's gate compared the candidate with the very version it replaced."""
    root = tmp_path / "project"
    root.mkdir()
    rng = np.random.default_rng(0)
    dataset = tmp_path / "splits.npz"
    np.savez(
        dataset,
        x_val=rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8),
        y_val=rng.integers(0, 10, size=300),
        x_test=rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, size=300),
    )
    env = {
        **prefect_server.env,
        **project_env(root, tmp_path),
        "GATE_MIN_ACCURACY": "0",
        "GATE_MIN_MACRO_F1": "0",
        "PROFILE": "",
    }
    client = registry.get_client(f"sqlite:///{root}/mlflow.db")
    client.search_experiments()  # create the schema once: MLflow's migrations do not race well
    barrier = str(tmp_path / "barrier")
    started = time.monotonic()
    runners = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.flows.race_flow", str(dataset), str(seed), barrier, "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(3)
    ]
    outputs = [runner.communicate(timeout=540)[0] for runner in runners]
    for runner, output in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, output[-4000:]
    results = [
        json.loads(line[len("RESULT ") :])
        for output in outputs
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(results) == 3
    print(f"three race flows took {time.monotonic() - started:.0f} s")
    name = "clothing-classifier"
    promoted = [r for r in results if r["promoted"]]
    history = [c for c in registry.production_history(client, name) if c.action == "promotion"]
    assert len(history) == len(promoted) >= 1
    # Each promotion replaced the Production its (final) gate compared with, in one chain.
    previous = None
    for change in history:
        assert change.from_version == previous
        [result] = [r for r in promoted if r["version"] == change.to_version]
        assert result["champion_version"] == change.from_version
        assert change.by.startswith("flow run ")
        details = json.loads(client.get_model_version(name, change.to_version).tags["gate_details"])
        assert details["champion_version"] == change.from_version
        # The model card states the verdict that decided the promotion (re-gated or not).
        card = client.get_model_version(name, change.to_version).tags[MODEL_CARD_TAG]
        if change.from_version is None:
            assert "No Production version to compare with" in card
        else:
            assert f"against Production v{change.from_version}" in card
        previous = change.to_version
    _assert_one_production(client, name, previous)
    # All three gated against "no Production" (the barrier); whoever promoted after the first
    # was gated again, against the version it replaced.
    assert all(r["gated_against"] is None for r in results)
    for result in promoted:
        assert result["regated"] == (result["champion_version"] is not None)
