"""Train on an already prepared split without the Prefect flow.

    python -m src.training --dataset data/prepared/splits.npz [--data-md5 MD5] [--split-hash H]

Settings come from ``configs/`` (``PROFILE``, ``TRAIN_*`` env vars). ``make train`` runs the whole
pipeline instead (data flow, training, gate, promotion).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PreparedFile:
    dataset_path: Path
    data_md5: str
    split_hash: str


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, help="the prepared .npz split")
    parser.add_argument("--data-md5", default="", help="md5 of the raw data (default: of the .npz)")
    parser.add_argument("--split-hash", default="", help="split hash (default: md5 of the .npz)")
    parser.add_argument("--profile", default=None, help="config profile, e.g. smoke")
    args = parser.parse_args(argv)

    from src.config import ConfigError, load_config
    from src.training import train_model

    dataset = Path(args.dataset)
    if not dataset.is_file():
        print(
            f"error: {dataset} not found; run the data flow first or fix --dataset.",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(args.profile)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    npz_md5 = file_md5(dataset)
    prepared = PreparedFile(dataset, args.data_md5 or npz_md5, args.split_hash or npz_md5)
    result = train_model(prepared, cfg)
    print(
        json.dumps(
            {"run_id": result.run_id, "model_uri": result.model_uri, **result.metrics}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
