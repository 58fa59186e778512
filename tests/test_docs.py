"""Docs that list configuration keys stay in step with the code."""

from pathlib import Path

from drencoder.config import describe_keys

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_running_md_lists_every_config_key_with_its_default():
    text = (DOCS / "running.md").read_text()
    for key, default, _ in describe_keys():
        assert f"| `{key}` | `{default}` |" in text, key


def test_running_md_names_every_field_of_every_metrics_row():
    from typing_extensions import get_type_hints

    from drencoder.reporting import schema

    text = (DOCS / "running.md").read_text()
    kinds = (schema.EvalRow, schema.RoundRow, schema.Stage1Row, schema.CodecRow, schema.SketchRow)
    for row_type in kinds:
        for key in get_type_hints(row_type):
            assert f"`{key}`" in text, f"{row_type.__name__}.{key}"
    for key in get_type_hints(schema.Diagnostics) | get_type_hints(schema.AdaptiveClippingRow):
        assert f"`{key}`" in text, key
