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


class _SectionReads(ast.NodeVisitor):
    """The attributes read off one section's settings in one module: ``<x>.<section>.<key>``,
    or ``<name>.<key>`` / ``self.<name>.<key>`` where the module binds ``name`` to the section
    (annotated with its model, or assigned from ``<x>.<section>``)."""

    def __init__(self, tree: ast.Module, section: str, model: str) -> None:
        self.section, self.model = section, model
        self.bound: set[str] = set()
        self.read: set[str] = set()
        for _ in range(2):  # a name bound from another bound name
            for node in ast.walk(tree):
                self._bind(node)
        self.visit(tree)

    def _is_section(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == self.section:
            return True
        if isinstance(node, ast.Name) and node.id in self.bound:
            return True
        return (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr in self.bound
        )

    def _annotated(self, annotation: ast.expr | None) -> bool:
        return (
            annotation is not None
            and re.search(rf"\b{self.model}\b", ast.unparse(annotation)) is not None
        )

    def _bind(self, node: ast.AST) -> None:
        if isinstance(node, ast.arg) and self._annotated(node.annotation):
            self.bound.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and self._annotated(node.annotation):
            self.bound.add(_target_name(node.target))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (
                    zip(target.elts, node.value.elts, strict=False)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                self.bound.update(_target_name(t) for t, v in pairs if self._is_settings(v))

    def _is_settings(self, value: ast.expr) -> bool:
        """An expression whose value is the section's settings: the section itself, a choice
        between such, or the model's constructors and copies."""
        if isinstance(value, ast.IfExp):
            return self._is_settings(value.body) or self._is_settings(value.orelse)
        if isinstance(value, ast.Call):
            func = value.func
            if isinstance(func, ast.Name):
                return func.id == self.model
            if isinstance(func, ast.Attribute) and func.attr in ("model_validate", "model_copy"):
                owner = func.value
                return (isinstance(owner, ast.Name) and owner.id == self.model) or self._is_section(
                    owner
                )
            return False
        return self._is_section(value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self._is_section(node.value):
            self.read.add(node.attr)
        self.generic_visit(node)


def _target_name(target: ast.expr) -> str:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr  # self.<name> = ...
    return ""


def _reads_of(section: str, model: type[BaseModel]) -> set[str]:
    trees = [
        ast.parse(path.read_text())
        for folder in READERS
        for path in (ROOT / folder).rglob("*.py")
        if (ROOT / "src" / "config") not in path.parents
    ]
    reads: set[str] = set()
    for tree in trees:
        reads |= _SectionReads(tree, section, model.__name__).read
    # AppConfig's own properties (cfg.tracking_uri) read sections for the code that reads them.
    app = ast.parse((ROOT / "src" / "config" / "sections.py").read_text())
    everything = "\n".join(ast.unparse(tree) for tree in trees)
    for prop, body in _app_property_bodies(app).items():
        if re.search(rf"\.{prop}\b", everything):
            reads |= _SectionReads(body, section, model.__name__).read
    return reads


def _app_property_bodies(tree: ast.Module) -> dict[str, ast.Module]:
    found = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AppConfig"):
        for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            found[method.name] = ast.Module(body=method.body, type_ignores=[])
    return found


def test_every_setting_is_read_somewhere() -> None:
    """A setting counts as read where code reads it off its section (``cfg.serve.top_k``, a
    ``serve: ServeConfig`` parameter's ``serve.top_k``), or through a method of the section's
    model that such code reads; a same-named attribute of anything else does not count."""
    unread = []
    for section, model in sections().items():
        reads = _reads_of(section, model)
        readers = _config_readers(model)
        for key in model.model_fields:
            if not (key in reads or any(method in reads for method in readers.get(key, ()))):
                unread.append(f"{section}.{key}")
    assert not unread, f"settings nothing in {READERS} reads (use them or delete them): {unread}"


def test_a_same_named_attribute_of_something_else_is_not_a_read() -> None:
    tree = ast.parse(
        "def f(cfg, path, serve: ServeConfig):\n"
        "    a = path.top_k + cfg.train.top_k\n"
        "    b = serve.max_batch_files + cfg.serve.api_key\n"
        "    limits, other = cfg.serve, cfg.train\n"
        "    copy = serve.model_copy(update={})\n"
        "    return limits.json_logs + other.host + copy.top_k + path.name\n"
    )
    reads = _SectionReads(tree, "serve", "ServeConfig").read
    assert reads - {"model_copy"} == {"max_batch_files", "api_key", "json_logs", "top_k"}
