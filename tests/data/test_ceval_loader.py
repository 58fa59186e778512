"""The C-Eval loader on a small fixture written in the official CSV layout."""

from __future__ import annotations

import csv
import json

import pytest

from drencoder.data import CEVAL_FORMAT, load_ceval
from drencoder.errors import AssetError, ConfigError

HEADER = ["id", "question", "A", "B", "C", "D", "answer"]


def _write(path, rows, header=HEADER, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def ceval_root(tmp_path):
    _write(
        tmp_path / "val" / "computer_network_val.csv",
        [
            [0, "UDP 可靠传输应在哪一层实现____", "数据链路层", "网络层", "传输层", "应用层", "D"],
            [1, "含逗号, 和\n换行的题目", "1", "2", "3", "4", "A"],
        ],
        bom=True,
    )
    _write(tmp_path / "val" / "high_school_physics_val.csv", [[0, "q", "a", "b", "c", "d", "B"]])
    dev_rows = [[i, f"例题{i}", "a", "b", "c", "d", "C", "解释"] for i in range(5)]
    _write(tmp_path / "dev" / "computer_network_dev.csv", dev_rows, header=[*HEADER, "explanation"])
    mapping = {"computer_network": ["Computer Network", "计算机网络", "STEM"]}
    (tmp_path / "subject_mapping.json").write_text(json.dumps(mapping, ensure_ascii=False), "utf-8")
    return tmp_path


def test_loads_val_dev_and_names(ceval_root):
    data = load_ceval(ceval_root)
    assert data.subjects == ("computer_network", "high_school_physics")
    assert len(data.val) == 3
    first = data.val[0]
    assert first.subject == "计算机网络" and first.answer == 3
    assert first.uid == "ceval/val/computer_network/0"
    assert data.val[1].question == "含逗号, 和\n换行的题目"
    assert data.val[2].subject == "high school physics"  # not in the mapping
    assert len(data.dev["计算机网络"]) == 5 and "high school physics" not in data.dev
    prompt = CEVAL_FORMAT.prompt(first, data.dev[first.subject][:2])
    assert prompt.startswith("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n")
    assert "\n答案： C\n\n" in prompt and prompt.endswith("D. 应用层\n答案：")


def test_subject_filter_and_explicit_names(ceval_root):
    data = load_ceval(ceval_root, subjects=["high_school_physics"], subject_names={})
    assert [i.subject for i in data.val] == ["high school physics"]
    with pytest.raises(ConfigError, match="not found"):
        load_ceval(ceval_root, subjects=["law"])


def test_layout_errors(tmp_path):
    with pytest.raises(AssetError, match="no C-Eval val directory"):
        load_ceval(tmp_path)
    _write(tmp_path / "val" / "x_val.csv", [[0, "q", "a", "b", "c", "E"]], header=HEADER[:-1])
    with pytest.raises(AssetError, match="missing columns"):
        load_ceval(tmp_path)
    _write(tmp_path / "val" / "x_val.csv", [[0, "q", "a", "b", "c", "d", "E"]])
    with pytest.raises(AssetError, match="answer='E'"):
        load_ceval(tmp_path)
