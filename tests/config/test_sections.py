"""Every setting has one default, in ``configs/<section>.yaml``, and something reads it."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from src.config import AppConfig, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
READERS = ("src", "flows", "deployments", "benchmarks")


def sections() -> dict[str, type[BaseModel]]:
    found = {}
    for name, field in AppConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found[name] = field.annotation
    return found


@pytest.mark.parametrize("name", sorted(sections()))
def test_the_model_has_no_defaults_and_the_yaml_every_key(name: str) -> None:
    model = sections()[name]
    defaulted = [key for key, field in model.model_fields.items() if not field.is_required()]
    assert not defaulted, (
        f"{model.__name__} gives defaults to {defaulted}: write them in configs/{name}.yaml only"
    )
    written = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    missing = sorted(set(model.model_fields) - set(written))
    assert not missing, f"configs/{name}.yaml lacks {missing}"


def test_the_app_config_has_no_defaults() -> None:
    defaulted = [key for key, field in AppConfig.model_fields.items() if not field.is_required()]
    assert not defaulted, f"AppConfig gives defaults to {defaulted}"


def test_a_missing_yaml_key_fails_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(CONFIGS, tmp_path / "configs")
    train = tmp_path / "configs" / "train.yaml"
    train.write_text(re.sub(r"(?m)^ema_decay:.*\n", "", train.read_text()))
    monkeypatch.setenv("CONFIG_DIR", str(tmp_path / "configs"))
    with pytest.raises(
        ConfigError, match=r"train\.ema_decay: missing; add `ema_decay:` to .*train"
    ):
        load_config(environ={})


def _config_readers(model: type[BaseModel]) -> dict[str, set[str]]:
    """field -> the model's own methods/properties that read ``self.field``."""
    tree = ast.parse(Path(__import__(model.__module__, fromlist=["_"]).__file__ or "").read_text())
    readers: dict[str, set[str]] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if cls.name != model.__name__:
            continue
        for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(method):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    readers.setdefault(node.attr, set()).add(method.name)
    return readers


def test_every_setting_is_read_somewhere() -> None:
    code = "\n".join(
        path.read_text()
        for folder in READERS
        for path in (ROOT / folder).rglob("*.py")
        if (ROOT / "src" / "config") not in path.parents
    )

    def read(name: str) -> bool:
        return re.search(rf"\.{name}\b", code) is not None

    unread = []
    for section, model in sections().items():
        readers = _config_readers(model)
        for key in model.model_fields:
            # Read directly, or through a method of the section model that code outside reads.
            if not (read(key) or any(read(method) for method in readers.get(key, ()))):
                unread.append(f"{section}.{key}")
    assert not unread, f"settings nothing in {READERS} reads (use them or delete them): {unread}"
