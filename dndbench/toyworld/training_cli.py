"""The shared command line of the toy-world training commands (ToyNet, toy backends)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def run_training_command(argv: list[str] | None, *, prog: str, description: str,
                         config_class: type[Any], default_out: Callable[[Any], Path],
                         train: Callable[..., dict[str, Any]],
                         format_report: Callable[[dict[str, Any]], str]) -> int:
    """Parse ``--seed --out --train-images --epochs --quiet``, train, print the report."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the cache folder the model loads from)")
    parser.add_argument("--train-images", type=int, default=config_class.train_images)
    parser.add_argument("--epochs", type=int, default=config_class.epochs)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = config_class(seed=args.seed, train_images=args.train_images, epochs=args.epochs)
    out = args.out or default_out(config)
    meta = train(config, out, progress=not args.quiet)
    print(format_report(meta["report"]))
    print(f"wrote {out / 'weights.pt'} and {out / 'meta.json'}")
    return 0
