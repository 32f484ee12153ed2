"""DVC on a real git + DVC repo in a temp dir, with a local remote beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.io import read_images, write_idx
from src.data.versioning import folder_md5, pull_data, read_dvc_md5, version_data
from tests.helpers.data import git, make_images, tiny_config, tree_snapshot


def test_add_push_unchanged_then_fresh_clone_pulls(
    dvc_project: tuple[Path, Path], tmp_path: Path
) -> None:
    root, remote = dvc_project
    images, labels = make_images()
    staged = tmp_path / "staging"
    write_idx(staged, images, labels)
    (staged / ".complete.json").write_text("{}")  # staging bookkeeping is not data
    cfg = tiny_config(dvc_remote_url="../dvc-remote")

    first = version_data(staged, root, root / "data", cfg)
    assert first.changed and first.pushed
    assert first.md5 == read_dvc_md5(root / "data.dvc") == folder_md5(staged)  # DVC's own hash
    assert sorted(p.name for p in (root / "data").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert tree_snapshot(remote)  # pushed
    assert "../../dvc-remote" in (root / ".dvc" / "config").read_text()  # relative, clone-friendly
    assert not (root / ".dvc" / "config.local").exists()

    again = version_data(staged, root, root / "data", cfg)
    assert (again.md5, again.changed, again.pushed) == (first.md5, False, False)

    git(root, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore", "data.dvc", ".gitignore")
    git(root, "commit", "-qm", "data")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    assert not (clone / "data").exists()
    pull_data(clone, clone / "data")
    x, y = read_images(clone / "data")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_changed_data_is_added_and_pushed_again(
    dvc_project: tuple[Path, Path], tmp_path: Path
) -> None:
    root, remote = dvc_project
    cfg = tiny_config()
    write_idx(tmp_path / "v1", *make_images(seed=1))
    write_idx(tmp_path / "v2", *make_images(seed=2))
    v1 = version_data(tmp_path / "v1", root, root / "data", cfg)
    objects_v1 = set(tree_snapshot(remote))
    v2 = version_data(tmp_path / "v2", root, root / "data", cfg)
    assert v2.changed and v2.md5 != v1.md5 == folder_md5(tmp_path / "v1")
    assert set(tree_snapshot(remote)) > objects_v1
    # A locally modified data/ is detected and restored to the staged content.
    (root / "data" / "train-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    v2b = version_data(tmp_path / "v2", root, root / "data", cfg)
    assert v2b.changed and v2b.md5 == v2.md5 == folder_md5(root / "data")


def test_remote_override_goes_to_config_local(
    dvc_project: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = dvc_project
    committed = (root / ".dvc" / "config").read_text()
    other = tmp_path / "elsewhere"
    write_idx(tmp_path / "v1", *make_images())
    version_data(tmp_path / "v1", root, root / "data", tiny_config(dvc_remote_url=str(other)))
    assert (root / ".dvc" / "config").read_text() == committed
    assert str(other) in (root / ".dvc" / "config.local").read_text()
    assert tree_snapshot(other)
