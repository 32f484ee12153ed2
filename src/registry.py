"""The MLflow model registry: register candidates, record the gate, promote, keep Production sane.

"Production" means two things at once in this project: the **alias** ``production`` (MLflow 3's
way) and the **stage** ``Production`` (deprecated in MLflow but still shown by the UI and used by
older clients). Both must name the same single version.

The alias is the source of truth. A promotion runs in this order, each step durable on its own:

1. ``register_candidate``: new version, tags ``validation_status=pending`` + data md5, split hash,
   metrics.
2. ``record_gate_decision``: ``validation_status=passed|failed`` and the gate's reasons.
3. ``promote`` (only for ``passed``): move the alias ``production`` to the version — from here on
   serving (which resolves the alias) answers with it — then transition the version to stage
   ``Production`` with ``archive_existing_versions=True``, then reconcile.

A crash between any two steps leaves at worst a version stuck at ``pending`` (never served) or the
alias ahead of the stage. :func:`reconcile_production` repairs the latter: the alias's version is
put in stage Production and every other Production version is archived; with no alias, the newest
``passed`` version in stage Production gets it. The train-flow calls it before anything else, so
after any sequence of runs exactly one version is in Production and the alias points at it.

Concurrency: every change of Production (promotion, rollback, repair) must run while holding the
registry lock (:func:`registry_lock`, plus Prefect's global concurrency limit in the flows), and
a promotion is a compare-and-swap: :func:`promote_candidate` with ``expected_production`` refuses
(:class:`ChampionMoved`) when Production is no longer the version the gate compared against, so
the caller re-gates against the new one. Each change is recorded in the registered model's tags
(``production_history.NNNNNN``: when, by whom, from, to, why); ``python -m src.registry history``
shows them.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src.errors import Refused
from src.locking import file_lock
from src.registry_names import PRODUCTION_ALIAS, PRODUCTION_STAGE

ARCHIVED_STAGE = "Archived"
STATUS_TAG = "validation_status"
REASONS_TAG = "gate_reasons"
DETAILS_TAG = "gate_details"
PENDING, PASSED, FAILED = "pending", "passed", "failed"
# MLflow caps tag values at 5000 characters (8000 on newer stores); stay under the smaller.
MAX_TAG_CHARS = 5000
HISTORY_PREFIX = "production_history."
PROMOTION, ROLLBACK, REPAIR = "promotion", "rollback", "repair"


class RegistryError(Refused):
    """The registry refused an operation; the message says what to do."""


class ChampionMoved(RegistryError):
    """Production is no longer the version the gate compared the candidate with."""

    def __init__(self, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"Production moved from v{expected or '-'} to v{actual or '-'} after the gate "
            f"compared the candidate with v{expected or '-'}; re-run the gate against "
            f"v{actual or '-'} before promoting."
        )
        self.expected, self.actual = expected, actual


@dataclass(frozen=True)
class ProductionChange:
    """One change of the Production version, as kept in the registered model's tags."""

    at: str  # ISO 8601, UTC
    by: str  # "flow run <name> (<id>)" or "user <login>"
    action: str  # promotion | rollback | repair
    from_version: str | None
    to_version: str | None
    reason: str


@dataclass
class ReconcileReport:
    production_version: str | None
    actions: list[str] = field(default_factory=list)


@dataclass
class PromotionResult:
    version: str
    status: str  # passed | failed
    promoted: bool
    production_version: str | None
    previous_production_version: str | None
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.promoted:
            return (
                f"Version {self.version} promoted to Production (alias '{PRODUCTION_ALIAS}'); "
                f"previous Production: {self.previous_production_version or 'none'}."
            )
        return (
            f"Version {self.version} not promoted (validation_status={self.status}); "
            f"Production stays at {self.production_version or 'none'}."
        )


# sqlite registries whose schema this process has seen created.
_SCHEMA_READY: set[str] = set()


def get_client(tracking_uri: str) -> MlflowClient:
    """A client whose tracking and registry stores are both ``tracking_uri``.

    MLflow creates a new sqlite database's tables on first use, and two processes doing so at
    once can fail (one sees the other's half-made schema): the first use runs under a file lock
    beside the database, one process at a time."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _SCHEMA_READY:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    database = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    with file_lock(Path(database + ".schema.lock"), 600.0, "creating the MLflow schema"):
        # The client's stores create or migrate the tables as they are made.
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    _SCHEMA_READY.add(tracking_uri)
    return client


@contextmanager
def _quiet_stage_warnings() -> Iterator[None]:
    # Stages are deprecated in MLflow 3 but are half of this project's Production contract.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _is_missing(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            return False
        raise
    return True


def _alias_version(client: MlflowClient, name: str) -> ModelVersion | None:
    # Read through the registered model: a missing alias is "no alias", not an error code that
    # differs between stores.
    aliases = client.get_registered_model(name).aliases or {}
    version = aliases.get(PRODUCTION_ALIAS)
    if version is None:
        return None
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def _all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    with _quiet_stage_warnings():
        versions = list(client.search_model_versions(f"name = '{name}'", max_results=10_000))
    return sorted(versions, key=lambda mv: int(mv.version))


def _production_stage_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return [mv for mv in _all_versions(client, name) if mv.current_stage == PRODUCTION_STAGE]


def current_production(client: MlflowClient, name: str) -> ModelVersion | None:
    """The Production version: the alias ``production``, else the newest version in stage
    Production, else ``None`` (no registered model or nothing promoted yet)."""
    if not _registered_model_exists(client, name):
        return None
    by_alias = _alias_version(client, name)
    if by_alias is not None:
        return by_alias
    in_stage = _production_stage_versions(client, name)
    return in_stage[-1] if in_stage else None


def model_version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_TAG_CHARS else text[: MAX_TAG_CHARS - 3] + "..."


def _model_id(model_uri: str) -> str | None:
    # MLflow 3 logged models are addressed as models:/<model_id> (no version part).
    if model_uri.startswith("models:/"):
        rest = model_uri[len("models:/") :]
        if rest and "/" not in rest and rest.startswith("m-"):
            return rest
    return None


def register_candidate(
    client: MlflowClient,
    name: str,
    *,
    model_uri: str,
    run_id: str | None,
    tags: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Create a new version of ``name`` from ``model_uri``, tagged ``validation_status=pending``."""
    if not _registered_model_exists(client, name):
        try:
            client.create_registered_model(
                name, description="Fashion-MNIST garment classifier (see the project README)."
            )
        except MlflowException as exc:  # created concurrently by another run
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
    all_tags = {key: _tag_value(value) for key, value in (tags or {}).items()}
    all_tags[STATUS_TAG] = PENDING
    with _quiet_stage_warnings():
        return client.create_model_version(
            name,
            source=model_uri,
            run_id=run_id,
            tags=all_tags,
            model_id=_model_id(model_uri),
            description=f"Candidate from run {run_id}" if run_id else None,
        )


def record_gate_decision(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    passed: bool,
    reasons: list[str],
    details: Mapping[str, Any] | None = None,
) -> None:
    """Tag the version with the gate's verdict and reasons (``passed``/``failed``)."""
    client.set_model_version_tag(name, version, REASONS_TAG, _tag_value("; ".join(reasons)))
    if details:
        client.set_model_version_tag(name, version, DETAILS_TAG, _tag_value(dict(details)))
    # The status goes last: "passed" is what allows promotion.
    client.set_model_version_tag(name, version, STATUS_TAG, PASSED if passed else FAILED)


def promote(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """Make ``version`` Production: alias first (the source of truth), then the stage with the
    others archived, then a reconcile pass. Refuses versions the gate did not pass."""
    mv = client.get_model_version(name, version)
    status = mv.tags.get(STATUS_TAG)
    if status != PASSED:
        raise RegistryError(
            f"Version {version} of {name!r} has validation_status={status!r}; only versions the "
            "gate passed can be promoted (re-run the train-flow, or tag it 'passed' deliberately)."
        )
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with _quiet_stage_warnings():
        client.transition_model_version_stage(
            name, version, PRODUCTION_STAGE, archive_existing_versions=True
        )
    reconcile_production(client, name)
    return client.get_model_version(name, version)


def reconcile_production(
    client: MlflowClient, name: str, *, actor: str | None = None
) -> ReconcileReport:
    """Repair drift between the alias and the stage so that exactly one version is in Production
    and the alias points at it. Safe to call at any time; does nothing when all is well.

    Call it holding the registry lock: a promotion landing between its reads and its writes is
    what the lock excludes. As a second line of defence the pass repeats when the alias moved
    while it ran, so it never leaves the alias on a version it has just archived.
    """
    report = ReconcileReport(production_version=None)
    if not _registered_model_exists(client, name):
        return report
    alias_before = _alias_version(client, name)
    for _ in range(3):
        target = _reconcile_pass(client, name, report)
        if target is None:
            return report
        after = _alias_version(client, name)
        if after is not None and str(after.version) == target:
            break
    if report.actions:
        record_change(
            client,
            name,
            action=REPAIR,
            from_version=str(alias_before.version) if alias_before is not None else None,
            to_version=report.production_version,
            reason="; ".join(report.actions),
            actor=actor,
        )
    return report


def _reconcile_pass(client: MlflowClient, name: str, report: ReconcileReport) -> str | None:
    target = _alias_version(client, name)
    in_stage = _production_stage_versions(client, name)
    if target is None:
        if not in_stage:
            return None  # nothing promoted yet
        passed = [mv for mv in in_stage if mv.tags.get(STATUS_TAG) == PASSED]
        target = (passed or in_stage)[-1]
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, target.version)
        report.actions.append(
            f"alias '{PRODUCTION_ALIAS}' was missing: set to version {target.version}"
        )
    report.production_version = str(target.version)
    with _quiet_stage_warnings():
        if target.current_stage != PRODUCTION_STAGE:
            client.transition_model_version_stage(
                name, target.version, PRODUCTION_STAGE, archive_existing_versions=True
            )
            report.actions.append(
                f"version {target.version} (alias '{PRODUCTION_ALIAS}') moved to stage Production"
            )
        for mv in _production_stage_versions(client, name):
            if str(mv.version) != str(target.version):
                client.transition_model_version_stage(name, mv.version, ARCHIVED_STAGE)
                report.actions.append(f"version {mv.version} was also in Production: archived")
    return str(target.version)


def promote_candidate(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    passed: bool,
    reasons: list[str],
    details: Mapping[str, Any] | None = None,
    expected_production: str | None = None,
    check_expected: bool = False,
    actor: str | None = None,
) -> PromotionResult:
    """Record the gate's verdict on ``version`` and promote it when it passed.

    With ``check_expected`` this is a compare-and-swap: when Production is no longer
    ``expected_production`` (the version the gate compared with) nothing is recorded and
    :class:`ChampionMoved` is raised, so the caller re-gates against the new Production.
    """
    previous = current_production(client, name)
    previous_version = str(previous.version) if previous is not None else None
    if check_expected and previous_version != expected_production:
        raise ChampionMoved(expected_production, previous_version)
    record_gate_decision(client, name, version, passed=passed, reasons=reasons, details=details)
    if passed:
        promote(client, name, version)
        record_change(
            client,
            name,
            action=PROMOTION,
            from_version=previous_version,
            to_version=str(version),
            reason="gate passed: " + "; ".join(reasons),
            actor=actor,
        )
    production = current_production(client, name)
    return PromotionResult(
        version=str(version),
        status=PASSED if passed else FAILED,
        promoted=passed,
        production_version=str(production.version) if production is not None else None,
        previous_production_version=previous_version,
        reasons=list(reasons),
    )


def rollback(
    client: MlflowClient,
    name: str,
    *,
    reason: str,
    to: str | None = None,
    actor: str | None = None,
) -> ProductionChange:
    """Move Production back to ``to`` (default: the version the current one replaced), with the
    same checks as a promotion (only gate-passed versions) and a history entry."""
    if not reason.strip():
        raise RegistryError("A rollback needs a reason; pass --reason TEXT (it goes in history).")
    current = current_production(client, name)
    if current is None:
        raise RegistryError(
            f"Nothing of {name!r} is in Production, so there is nothing to roll back; "
            "promote a version with `python -m src.registry promote VERSION`."
        )
    now = str(current.version)
    target = str(to) if to is not None else _rollback_target(client, name, now)
    if target == now:
        raise RegistryError(f"Version {now} is already Production; choose another with --to.")
    try:
        client.get_model_version(name, target)
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(
                f"{name!r} has no version {target}; `python -m src.registry status` lists them."
            ) from None
        raise
    promote(client, name, target)
    return record_change(
        client,
        name,
        action=ROLLBACK,
        from_version=now,
        to_version=target,
        reason=reason.strip(),
        actor=actor,
    )


def _rollback_target(client: MlflowClient, name: str, current: str) -> str:
    # The version the current one replaced, by the history; else the newest older passed one.
    for change in reversed(production_history(client, name)):
        if change.to_version == current and change.from_version not in (None, current):
            return str(change.from_version)
    older = [
        str(mv.version)
        for mv in _all_versions(client, name)
        if int(mv.version) < int(current) and mv.tags.get(STATUS_TAG) == PASSED
    ]
    if not older:
        raise RegistryError(
            f"No earlier gate-passed version of {name!r} to roll back to; pass --to VERSION."
        )
    return older[-1]


def default_actor() -> str:
    """Who is changing Production: ``$REGISTRY_ACTOR``, else the login name."""
    actor = os.environ.get("REGISTRY_ACTOR")
    if actor:
        return actor
    try:
        return f"user {getpass.getuser()}"
    except (OSError, KeyError):
        return "user unknown"


def record_change(
    client: MlflowClient,
    name: str,
    *,
    action: str,
    from_version: str | None,
    to_version: str | None,
    reason: str,
    actor: str | None = None,
) -> ProductionChange:
    """Append a change of Production to the history (a registered-model tag per change).

    Numbered entries are safe because every writer holds the registry lock."""
    change = ProductionChange(
        at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        by=actor or default_actor(),
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason[:2000],
    )
    tags = client.get_registered_model(name).tags or {}
    numbers = [int(k[len(HISTORY_PREFIX) :]) for k in tags if k.startswith(HISTORY_PREFIX)]
    key = f"{HISTORY_PREFIX}{max(numbers, default=0) + 1:06d}"
    client.set_registered_model_tag(name, key, _tag_value(asdict(change)))
    return change


def production_history(client: MlflowClient, name: str) -> list[ProductionChange]:
    """Every recorded change of Production, oldest first."""
    if not _registered_model_exists(client, name):
        return []
    tags = client.get_registered_model(name).tags or {}
    entries = sorted((k, v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX))
    changes = []
    for _, value in entries:
        try:
            changes.append(ProductionChange(**json.loads(value)))
        except (ValueError, TypeError):
            continue  # a hand-edited or truncated entry: skip it rather than hide the rest
    return changes


def registry_lock_path(tracking_uri: str, fallback_dir: Path) -> Path:
    """The lock file for the registry at ``tracking_uri``: beside a sqlite database (shared by
    every checkout that uses it), else one per URI under ``fallback_dir``."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :] + ".lock")
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return fallback_dir / f"registry-{digest}.lock"


def registry_lock(
    tracking_uri: str, fallback_dir: Path, timeout_s: float = 3600.0
) -> AbstractContextManager[None]:
    """The file lock every change of Production holds (see the module docstring)."""
    return file_lock(
        registry_lock_path(tracking_uri, fallback_dir), timeout_s, "a change of Production"
    )


def production_consistent(client: MlflowClient, name: str) -> bool:
    """True when exactly one version is in stage Production and the alias names it (or when
    nothing is promoted at all)."""
    if not _registered_model_exists(client, name):
        return True
    alias = _alias_version(client, name)
    in_stage = [str(mv.version) for mv in _production_stage_versions(client, name)]
    if alias is None:
        return not in_stage
    return in_stage == [str(alias.version)]


def describe(client: MlflowClient, name: str) -> str:
    """A plain-text table of the registered versions (for the CLI)."""
    if not _registered_model_exists(client, name):
        return f"No registered model {name!r} yet; run `make train`."
    production = current_production(client, name)
    lines = [f"{'version':>7}  {'stage':<10}  {'status':<8}  {'acc':>6}  {'f1':>6}  alias"]
    for mv in _all_versions(client, name):
        alias = (
            PRODUCTION_ALIAS if production is not None and mv.version == production.version else ""
        )
        lines.append(
            f"{mv.version:>7}  {mv.current_stage:<10}  {mv.tags.get(STATUS_TAG, '?'):<8}  "
            f"{mv.tags.get('test_accuracy', '')[:6]:>6}  {mv.tags.get('test_macro_f1', '')[:6]:>6}  "
            f"{alias}"
        )
    return "\n".join(lines)


def format_history(changes: list[ProductionChange]) -> str:
    """The history as a plain-text table (for the CLI)."""
    if not changes:
        return "No change of Production recorded yet."
    lines = [f"{'when (UTC)':<29}  {'action':<9}  {'from':>4}  {'to':>4}  by / why"]
    for c in changes:
        lines.append(
            f"{c.at:<29}  {c.action:<9}  {c.from_version or '-':>4}  {c.to_version or '-':>4}  "
            f"{c.by}: {c.reason}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.registry", description="Inspect and change the Production model."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="list the versions, their stage and gate status")
    commands.add_parser("reconcile", help="repair alias/stage drift left by a crash")
    commands.add_parser("history", help="every change of Production: when, who, from, to, why")
    promote_cmd = commands.add_parser("promote", help="make a gate-passed VERSION Production")
    promote_cmd.add_argument("version")
    promote_cmd.add_argument("--reason", default="promoted by hand")
    back = commands.add_parser("rollback", help="move Production back (default: previous one)")
    back.add_argument("--to", help="the version to go back to (default: the one it replaced)")
    back.add_argument("--reason", required=True, help="why (kept in the history)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m src.registry status|reconcile|history|promote VERSION|rollback``."""
    from src.config import load_config

    args = _parser().parse_args(argv)
    cfg = load_config()
    client = get_client(cfg.tracking_uri)
    name = cfg.mlflow.registered_model_name
    if args.command == "history":
        print(format_history(production_history(client, name)))
        return 0
    with registry_lock(cfg.tracking_uri, cfg.paths.outputs / "locks"):
        _change(client, name, args)
    print(describe(client, name))
    return 0


def _change(client: MlflowClient, name: str, args: argparse.Namespace) -> None:
    actor = default_actor()
    if args.command == "reconcile":
        report = reconcile_production(client, name, actor=actor)
        print("\n".join(report.actions) or "Registry consistent; nothing to repair.")
    elif args.command == "promote":
        previous = current_production(client, name)
        promote(client, name, args.version)
        record_change(
            client,
            name,
            action=PROMOTION,
            from_version=str(previous.version) if previous is not None else None,
            to_version=str(args.version),
            reason=args.reason,
            actor=actor,
        )
    elif args.command == "rollback":
        change = rollback(client, name, to=args.to, reason=args.reason, actor=actor)
        print(f"Rolled back Production from v{change.from_version} to v{change.to_version}.")


if __name__ == "__main__":
    from src.cli import call

    raise SystemExit(call("registry", main))
