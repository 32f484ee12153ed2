"""Train on an already prepared split without the Prefect flow.

    python -m src.training --dataset data/prepared/splits.npz [--data-md5 MD5] [--split-hash H]

Settings come from ``configs/`` (``PROFILE``, ``TRAIN_*`` env vars). ``make train`` runs the whole
pipeline instead (data flow, training, gate, promotion).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, help="the prepared .npz split")
    parser.add_argument("--data-md5", default="", help="md5 of the raw data (default: of the .npz)")
    parser.add_argument("--split-hash", default="", help="split hash (default: md5 of the .npz)")
    parser.add_argument("--profile", default=None, help="config profile, e.g. smoke")
    args = parser.parse_args(argv)

    from src.config import load_config
    from src.data.split import PreparedData
    from src.training.train import train_model

    dataset = Path(args.dataset)
    if not dataset.is_file():
        raise FileNotFoundError(f"{dataset} not found; run the data flow first or fix --dataset.")
    cfg = load_config(args.profile)
    prepared = PreparedData.from_file(dataset, args.data_md5, args.split_hash)
    result = train_model(prepared, cfg)
    print(
        json.dumps(
            {"run_id": result.run_id, "model_uri": result.model_uri, **result.metrics}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    from src.cli import call

    raise SystemExit(call("fit", main))
