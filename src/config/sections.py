"""The top-level configuration model and the small shared sections."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from src.config.data import DataConfig
from src.config.flow import FlowConfig
from src.config.gate import GateConfig
from src.config.monitor import MonitorConfig
from src.config.serve import ServeConfig
from src.config.train import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class PathsConfig(BaseModel):
    """Where the project keeps its working files; relative paths are taken from ``root``."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "PATHS_"

    root: Path = PROJECT_ROOT
    data_dir: Path = Path("data")
    outputs_dir: Path = Path("outputs")

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

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str = "clothing-classifier"
    registered_model_name: str = "clothing-classifier"
    artifact_location: str = "mlartifacts"

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

    profile: str = "default"
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.resolved_tracking_uri(self.paths.root)
