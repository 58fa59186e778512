"""The run configuration: a schema of frozen dataclasses (``schema``) and one loader for
TOML files, ``--set`` overrides and presets (``loading``). See docs/running.md."""

from drencoder.config.loading import (
    describe_keys,
    dump_toml,
    load_config,
    parse_override,
    to_dict,
)
from drencoder.config.schema import (
    PRESETS,
    Architecture,
    CheckpointConfig,
    CodecBasis,
    CodecConfig,
    DataConfig,
    EvalConfig,
    Method,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    SamplingConfig,
    ServerConfig,
    ServerOptimizer,
    Stage1Config,
    Task,
)

__all__ = [
    "PRESETS",
    "Architecture",
    "CheckpointConfig",
    "CodecBasis",
    "CodecConfig",
    "DataConfig",
    "EvalConfig",
    "Method",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "SamplingConfig",
    "ServerConfig",
    "ServerOptimizer",
    "Stage1Config",
    "Task",
    "describe_keys",
    "dump_toml",
    "load_config",
    "parse_override",
    "to_dict",
]
