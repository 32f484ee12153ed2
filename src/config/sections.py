"""The top-level configuration model and the small shared sections."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, field_validator

from src.config.data import DataConfig
from src.config.edge import EdgeConfig
from src.config.flow import FlowConfig
from src.config.gate import GateConfig
from src.config.monitor import MonitorConfig
from src.config.serve import ServeConfig
from src.config.train import TrainConfig
from src.package import PROJECT_ROOT


class PathsConfig(BaseModel):
    """Where the project keeps its working files; relative paths are taken from ``root``."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "PATHS_"

    root: Path
    data_dir: Path
    outputs_dir: Path

    @field_validator("root")
    @classmethod
    def _root_from_project(cls, value: Path) -> Path:
        # configs/paths.yaml says "root: .": the checkout, wherever the process was started, or
        # the working folder for an installed package (src.package).
        return value if value.is_absolute() else (PROJECT_ROOT / value).resolve()

    def resolve(self, path: Path | str) -> Path:
        """Return ``path`` made absolute against the project root."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.root / candidate).resolve()

    @property
    def data(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def outputs(self) -> Path:
        return self.resolve(self.outputs_dir)


class MlflowConfig(BaseModel):
    """Tracking server and model registry. ``MLFLOW_TRACKING_URI`` points it elsewhere."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "MLFLOW_"

    tracking_uri: str
    experiment_name: str
    registered_model_name: str
    artifact_location: str

    def resolved_tracking_uri(self, root: Path) -> str:
        """Make a relative ``sqlite:///`` URI absolute so every process sees one database."""
        prefix = "sqlite:///"
        if self.tracking_uri.startswith(prefix):
            db_path = Path(self.tracking_uri[len(prefix) :])
            if not db_path.is_absolute():
                return prefix + str((root / db_path).resolve())
        return self.tracking_uri

    def resolved_artifact_location(self, root: Path) -> str:
        # A URI (s3://, file://, mlflow-artifacts:/...) is used as is; a one-letter scheme is a
        # Windows drive, i.e. a path. Relative paths are taken from the project root.
        if len(urlparse(self.artifact_location).scheme) > 1:
            return self.artifact_location
        location = Path(self.artifact_location).expanduser()
        if not location.is_absolute():
            location = (root / location).resolve()
        return location.as_uri()


class AppConfig(BaseModel):
    """Everything the product reads from ``configs/``."""

    model_config = ConfigDict(extra="forbid")

    profile: str
    paths: PathsConfig
    data: DataConfig
    train: TrainConfig
    mlflow: MlflowConfig
    gate: GateConfig
    flow: FlowConfig
    serve: ServeConfig
    monitor: MonitorConfig
    edge: EdgeConfig

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.resolved_tracking_uri(self.paths.root)
