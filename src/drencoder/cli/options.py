"""Arguments shared by the commands that take a run configuration."""

from __future__ import annotations

import argparse

from drencoder.config import PRESETS, RunConfig, load_config


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
