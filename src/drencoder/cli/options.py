"""Arguments shared by the commands that take a run configuration."""

from __future__ import annotations

import argparse

from drencoder.config import PRESETS, RunConfig, load_config
from drencoder.config.loading import is_device


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--set KEY=VALUE`` (repeatable) and ``--preset NAME``."""
    parser.add_argument("--config", metavar="FILE", help="run configuration (TOML)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config key (repeatable), e.g. --set rounds=10",
    )
    parser.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="named preset to start from (default: default)",
    )


def config_from_arguments(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, overrides=args.overrides, preset=args.preset)


def device(text: str) -> str:
    """An argparse type: a torch device, cpu, cuda or cuda:N (the rule of ``model.device``)."""
    if not is_device(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text
