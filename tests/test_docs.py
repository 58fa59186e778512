"""Docs that list configuration keys stay in step with the code."""

from pathlib import Path

from drencoder.config import describe_keys

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_running_md_lists_every_config_key_with_its_default():
    text = (DOCS / "running.md").read_text()
    for key, default, _ in describe_keys():
        assert f"| `{key}` | `{default}` |" in text, key
