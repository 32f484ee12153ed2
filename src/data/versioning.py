"""Version the raw data with DVC (Python API): ``data/`` is tracked by ``data.dvc`` at the root.

:func:`version_data` moves validated, staged files into ``data/`` (swapping the whole folder, so a
crash or a failed ``dvc add``/``dvc push`` leaves the previous ``data/`` and ``data.dvc`` in place),
then runs ``dvc add`` + ``dvc push`` only when the data changed (or the remote lacks it). The
returned md5 is the one ``data.dvc`` records (``<md5>.dir``), computed the way DVC does, so it is
also known *before* versioning (:func:`dir_md5`).

Remote: ``cfg.dvc_remote_url`` (default ``../dvc-remote``, relative to the project root) under the
name ``cfg.dvc_remote_name``. The committed ``.dvc/config`` names it as the default remote; a
different URL from the environment (``DATA_DVC_REMOTE_URL=s3://bucket/prefix``) is written to the
git-ignored ``.dvc/config.local`` so the committed file does not change, with the endpoint of
an S3-compatible store (``DATA_DVC_REMOTE_ENDPOINT_URL``) when one is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from src.config.data import DataConfig
from src.data.io import data_files
from src.hashing import file_md5


class VersioningError(RuntimeError):
    """DVC could not record or push the data."""


@dataclass(frozen=True)
class DataVersion:
    md5: str  # as in data.dvc, e.g. "3f0c...e1.dir"
    changed: bool  # data/ was replaced and `dvc add` ran
    pushed: bool  # `dvc push` ran (changed, or the remote lacked the data)
    dvc_file: Path
    data_dir: Path


def listing_md5(file_md5s: dict[str, str]) -> str:
    """DVC's directory hash from ``relpath -> md5``: md5 of the sorted JSON listing + ``.dir``."""
    entries = sorted(
        ({"md5": md5, "relpath": relpath} for relpath, md5 in file_md5s.items()),
        key=lambda e: e["relpath"],
    )
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def dir_md5(files: list[Path], base: Path) -> str:
    """DVC's directory hash of ``files`` (relative to ``base``)."""
    return listing_md5({p.relative_to(base).as_posix(): file_md5(p) for p in files})


def folder_md5(folder: Path) -> str:
    """:func:`dir_md5` of the data files (IDX pair or CSV) in ``folder``."""
    return dir_md5(data_files(folder), folder)


def read_dvc_md5(dvc_file: Path) -> str | None:
    """The md5 of the single output recorded in a ``.dvc`` file, or None."""
    try:
        meta = yaml.safe_load(dvc_file.read_text()) or {}
        return str(meta["outs"][0]["md5"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def resolve_remote_url(url: str, root: Path) -> str:
    """A URL with a scheme stays as it is; a local path becomes absolute (from the project root)."""
    if "://" in url:
        return url
    path = Path(url).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())


@contextlib.contextmanager
def _repo(root: Path) -> Iterator[Any]:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        yield repo
    finally:
        repo.close()


def init_repo(root: Path, remote_name: str, remote_url: str) -> None:
    """``dvc init`` (if needed) and make ``remote_url`` the default remote in ``.dvc/config``.

    A local remote path is stored relative to ``.dvc/`` so clones beside the remote find it.
    """
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        Repo.init(str(root), no_scm=not (root / ".git").exists()).close()
    url = resolve_remote_url(remote_url, root)
    # DVC takes a relative path written through the API as relative to the working directory
    # and stores it relative to .dvc/ (so a clone beside the remote finds it).
    stored = url if "://" in url or Path(remote_url).is_absolute() else os.path.relpath(url)
    with _repo(root) as repo, repo.config.edit("repo") as conf:
        conf["remote"][remote_name] = {"url": stored}
        conf["core"]["remote"] = remote_name


def _ensure_remote(repo: Any, root: Path, cfg: DataConfig) -> None:
    wanted = resolve_remote_url(cfg.dvc_remote_url, root)
    config = repo.config
    current = config.get("remote", {}).get(cfg.dvc_remote_name, {}).get("url")
    if current is not None and "://" not in str(current):
        current = str(Path(str(current)).resolve())
    default = config.get("core", {}).get("remote")
    endpoint = cfg.dvc_remote_endpoint_url
    current_endpoint = config.get("remote", {}).get(cfg.dvc_remote_name, {}).get("endpointurl")
    same_endpoint = endpoint is None or current_endpoint == endpoint
    if current == wanted and default == cfg.dvc_remote_name and same_endpoint:
        return
    with config.edit("local") as conf:
        conf["remote"][cfg.dvc_remote_name] = {"url": wanted}
        if endpoint:
            conf["remote"][cfg.dvc_remote_name]["endpointurl"] = endpoint
        conf["core"]["remote"] = cfg.dvc_remote_name


def _swap_in(staged_files: list[Path], data_dir: Path) -> Path | None:
    """Replace ``data_dir`` by a folder holding copies of ``staged_files``; return the old one."""
    parent = data_dir.parent
    new = parent / f".{data_dir.name}.new-{os.getpid()}"
    old = parent / f".{data_dir.name}.old-{os.getpid()}"
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    new.mkdir(parents=True)
    for path in staged_files:
        shutil.copyfile(path, new / path.name)
    previous: Path | None = None
    if data_dir.exists():
        data_dir.rename(old)
        previous = old
    new.rename(data_dir)
    return previous


def _restore(data_dir: Path, previous: Path | None, dvc_file: Path, dvc_text: str | None) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    if previous is not None:
        previous.rename(data_dir)
    if dvc_text is None:
        dvc_file.unlink(missing_ok=True)
    else:
        dvc_file.write_text(dvc_text)


def version_data(staged_dir: Path, root: Path, data_dir: Path, cfg: DataConfig) -> DataVersion:
    """Put the staged (validated) files into ``data_dir`` and record them with DVC.

    ``dvc add`` + ``dvc push`` run only when the content differs from ``data.dvc`` (or ``data/``
    was modified, or the remote lacks the data). Returns the md5 recorded in ``data.dvc``.
    """
    root = root.resolve()
    data_dir = data_dir.resolve()
    if not (root / ".dvc").is_dir():
        raise VersioningError(
            f"{root} is not a DVC repository; run `dvc init` there (or `make train` on a fresh clone)."
        )
    staged = data_files(staged_dir)
    new_md5 = dir_md5(staged, staged_dir)
    dvc_file = data_dir.parent / f"{data_dir.name}.dvc"
    recorded = read_dvc_md5(dvc_file)
    unchanged = recorded == new_md5 and data_dir.is_dir() and folder_md5(data_dir) == new_md5
    with _repo(root) as repo:
        _ensure_remote(repo, root, cfg)
        if unchanged:
            missing = repo.status(targets=[str(dvc_file)], cloud=True)
            if not missing:
                return DataVersion(new_md5, False, False, dvc_file, data_dir)
            _push(repo, dvc_file, cfg)
            return DataVersion(new_md5, False, True, dvc_file, data_dir)
        dvc_text = dvc_file.read_text() if dvc_file.is_file() else None
        previous = _swap_in(staged, data_dir)
        try:
            repo.add([str(data_dir)])
            _push(repo, dvc_file, cfg)
        except BaseException:
            _restore(data_dir, previous, dvc_file, dvc_text)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    md5 = read_dvc_md5(dvc_file)
    if md5 != new_md5:
        raise VersioningError(f"data.dvc records {md5}, expected {new_md5}; re-run the data flow.")
    return DataVersion(new_md5, True, True, dvc_file, data_dir)


def _push(repo: Any, dvc_file: Path, cfg: DataConfig) -> None:
    try:
        repo.push(targets=[str(dvc_file)])
    except Exception as exc:
        raise VersioningError(
            f"dvc push to remote {cfg.dvc_remote_name!r} ({cfg.dvc_remote_url}) failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check "
            "DATA_DVC_REMOTE_URL and its credentials."
        ) from exc


def pull_data(root: Path, data_dir: Path) -> None:
    """``dvc pull`` the tracked ``data_dir`` (e.g. on a fresh clone beside the remote)."""
    dvc_file = data_dir.parent / f"{data_dir.name}.dvc"
    with _repo(root) as repo:
        repo.pull(targets=[str(dvc_file)])
