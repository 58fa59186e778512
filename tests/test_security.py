"""No pickle on any load path: an AST scan of every module under ``src/drencoder``.

Flagged: importing a module that unpickles or unmarshals (``pickle``, ``cPickle``,
``_pickle``, ``dill``, ``joblib``, ``shelve``, ``marshal``, ``cloudpickle``), also through
``__import__``/``importlib.import_module``; ``torch.load`` (however ``torch`` or ``load`` was
imported) without ``weights_only=True``; and any call passing ``allow_pickle`` other than a
literal ``False`` (``numpy.load(..., allow_pickle=True)``). The scanner is tested on
synthetic sources below, so it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "drencoder"
BANNED = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
DYNAMIC_IMPORTS = {"__import__", "import_module"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def findings(source: str, filename: str = "<string>") -> list[str]:
    """Every unsafe deserialisation in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename=filename)
    torch_names = {"torch"}  # names bound to the torch module
    load_names: set[str] = set()  # names bound to torch.load
    out: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        out.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED:
                    flag(node, f"import {alias.name}")
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED:
                flag(node, f"from {node.module} import ...")
            if node.module in ("torch", "torch.serialization"):
                load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in DYNAMIC_IMPORTS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in BANNED:
                flag(node, f"{name}({arg.value!r})")
        is_torch_load = (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and (
                (isinstance(func.value, ast.Name) and func.value.id in torch_names)
                or (isinstance(func.value, ast.Attribute) and func.value.attr == "serialization")
            )
        ) or (isinstance(func, ast.Name) and func.id in load_names)
        if is_torch_load:
            weights_only = _keyword(node, "weights_only")
            if weights_only is None or not _is_true(weights_only.value):
                flag(node, "torch.load without weights_only=True")
        allow = _keyword(node, "allow_pickle")
        if allow is not None and not (
            isinstance(allow.value, ast.Constant) and allow.value.value is False
        ):
            flag(node, f"{name}(..., allow_pickle=...) not False")
    return out


def test_no_module_under_src_can_unpickle():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the scan really ran over the package
    problems = [f for path in files for f in findings(path.read_text(), str(path))]
    assert problems == []


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import pickle as p",
        "import cPickle",
        "import dill",
        "import joblib.numpy_pickle",
        "from shelve import open",
        "from marshal import loads",
        "import os, cloudpickle",
        "def f():\n    import pickle\n",
        "__import__('pickle')",
        "import importlib\nimportlib.import_module('dill')",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch\ntorch.load('x.pt', weights_only=flag)",
        "import torch as T\nT.load(f)",
        "from torch import load\nload(f)",
        "from torch import load as tl\ntl(f)",
        "import torch\ntorch.serialization.load(f)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "from numpy import load\nload('a.npz', allow_pickle=flag)",
    ],
)
def test_scanner_flags_unsafe_loads(source):
    assert findings(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import json\njson.load(f)",
        "from safetensors.torch import load_file\nload_file('a.safetensors')",
        "import numpy as np\nnp.load('a.npy')\nnp.load('b.npy', allow_pickle=False)",
        "text = 'import pickle'  # a string, not an import",
        "import tomllib\ntomllib.load(f)",
    ],
)
def test_scanner_accepts_safe_loads(source):
    assert findings(source) == []
