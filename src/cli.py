"""One command line for the whole product: ``clothing-classifier <command> [options]``.

Each command is the ``main(argv)`` of the module that owns it (imported only when chosen, so
``serve`` does not pay for training imports); ``python -m <module>`` stays as a thin alias.
This is the one place errors are mapped to exit codes (the commands' ``main`` functions raise):
2 for bad configuration or input, 1 for a refusal (:class:`src.errors.Refused`, its message
printed as is) or a failure, 130 when interrupted; each is printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from src.config import ConfigError
from src.errors import Refused

# command -> ("module:function" taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("flows.data_flow:main", "download, validate, version (DVC) and split the data"),
    "train": ("flows.train_flow:main", "run the whole train-flow: data, training, gate, promotion"),
    "fit": ("src.training.__main__:main", "train on an already prepared split, without Prefect"),
    "evaluate": ("src.evaluate:main", "evaluate a registered version, a run or a checkpoint"),
    "registry": ("src.registry:main", "show or change the registry's Production version"),
    "serve": (
        "src.serving.cli:main",
        "serve the Production model over HTTP (uvicorn, SERVE_HOST/PORT)",
    ),
    "deploy": ("deployments.deploy:main", "register the Prefect deployments"),
    "monitor": ("flows.monitor_flow:main", "drift checks on the prediction log (monitor-flow)"),
    "export-feedback": (
        "src.monitoring.feedback:main",
        "export labelled feedback as a dataset (CSV + IDX)",
    ),
}

USAGE_ERRORS = (ConfigError, ValidationError, FileNotFoundError, ValueError)
# Modules of this project; any other missing module is a dependency the install left out.
OWN_PACKAGES = frozenset({"src", "flows", "deployments"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clothing-classifier",
        description="Fashion-MNIST garment classifier: data, training, registry and serving.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def resolve(command: str) -> Callable[[list[str] | None], int]:
    module_name, function_name = COMMANDS[command][0].split(":")
    function: Callable[[list[str] | None], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function


def run(command: str, argv: list[str]) -> int:
    """Run one command (its module imported now); errors become exit codes (:func:`call`)."""
    return call(command, lambda args: resolve(command)(args), argv)


def call(
    command: str, function: Callable[[list[str] | None], int], argv: list[str] | None = None
) -> int:
    """``function(argv)``'s exit code, or the exit code of the error it raised, printed as one
    line. ``python -m <module>`` runs its ``main`` through this too."""
    try:
        return function(sys.argv[1:] if argv is None else argv)
    except USAGE_ERRORS as exc:
        print(f"clothing-classifier {command}: {usage_line(exc)}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"clothing-classifier {command}: {first_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clothing-classifier {command}: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        print(failure_line(command, exc), file=sys.stderr)
        return 1


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def usage_line(exc: Exception) -> str:
    """A bad setting or input in one line; for invalid parameters, each field and its problem."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return f"invalid parameter ({problems}); see --help."
    return first_line(exc)


def failure_line(command: str, exc: Exception) -> str:
    """One line for an unexpected failure; a dependency the install left out says what to add."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] not in OWN_PACKAGES:
        # The base install serves only; every other command needs the training stack.
        return (
            f"clothing-classifier {command}: needs {missing!r}, which this install lacks; "
            "install the train extra: pip install 'clothing-classifier[train]' "
            "(in a checkout: make install)."
        )
    return (
        f"clothing-classifier {command} failed: {type(exc).__name__}: {exc}. "
        "The log above names the failed step; fix the cause and run the command again."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    known, rest = build_parser().parse_known_args(args[:1])
    return run(known.command, rest + args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
