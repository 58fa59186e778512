"""drencoder on Flower's Deployment Runtime with real processes, on 127.0.0.1 only.

A SuperLink and two SuperNodes (one partition each) run a two-round ``dr-encoder`` job
submitted with ``flwr run``; the server's run directory is then compared with the
in-process simulator's for the same config and seed. Every process is started in its own
process group and carries a marker in its environment, so the fixture can stop all of
them, also the ones Flower detaches, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dp_accounting
import pytest
import torch
from safetensors.torch import load_file

from helpers import make_tiny_llama, make_tiny_tokenizer

pytest.importorskip("flwr")

import contextlib

from drencoder.accounting import PrivacyLedger
from drencoder.config import load_config
from drencoder.federated.simulator import Simulator
from drencoder.reporting import schema

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning"),
]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "DRENCODER_E2E_MARKER"

# Run-config overrides, each a key of examples/flower-app/pyproject.toml.
RUN = {
    "preset": "smoke",
    "method": "dr-encoder",
    "rounds": 2,
    "clients": 2,
    "local.lr": 0.01,
    "eval.questions": 4,
    "eval.every": 0,
    "codec.train_steps": 3,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_pids(token: str) -> list[int]:
    """Processes whose environment carries this test's marker (ours and their children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARKER}={token}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = uuid.uuid4().hex
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
            "FLWR_HOME": str(root / "flwr-home"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            MARKER: self.token,
        }

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in marked_pids(self.token):  # detached helpers (SuperExec, app processes)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


def save_tiny_model(folder: Path) -> None:
    make_tiny_llama().save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)


def toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def test_two_rounds_on_a_superlink_and_two_supernodes(federation, tmp_path):
    start = time.monotonic()
    model_dir, out = tmp_path / "tiny-model", tmp_path / "server-run"
    save_tiny_model(model_dir)
    app = tmp_path / "app"
    shutil.copytree(REPO / "examples" / "flower-app", app)
    link = free_port()
    federation.start(
        "superlink",
        "flower-superlink",
        "--insecure",
        "--host=127.0.0.1",
        f"--port={link}",
        "--disable-runtime-dependency-installation",
    )
    ledgers = [tmp_path / f"node-ledger-{pid}.json" for pid in range(2)]
    # Node 0 also sets a policy the run meets, to exercise the node-config parsing.
    policies = ['require-placement="local" max-epsilon=1000 min-noise-multiplier=0', ""]
    for pid in range(2):
        federation.start(
            f"supernode-{pid}",
            "flower-supernode",
            "--insecure",
            f"--superlink=127.0.0.1:{link}",
            "--host=127.0.0.1",
            f"--port={free_port()}",
            f"--node-config=partition-id={pid} num-partitions=2 noise-seed={pid + 1} "
            f'ledger-path="{ledgers[pid]}" {policies[pid]}',
        )
    home = Path(federation.env["FLWR_HOME"])
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n"
    )
    run = {**RUN, "model.name": str(model_dir), "out": str(out)}
    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in run.items())
    deadline = time.monotonic() + 60
    while True:  # the SuperLink takes a few seconds to accept runs
        submit = federation.start(
            "flwr-run", "flwr", "run", str(app), "e2e", "--run-config", overrides
        )
        if submit.wait(timeout=60) == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submit.returncode == 0, federation.logs()
    while not (out / "report.md").exists():
        assert time.monotonic() < start + 240, "the run did not finish\n" + federation.logs()
        time.sleep(1)
    elapsed = time.monotonic() - start

    # The same job in process, same config and seed.
    overrides = [f"{k}={toml_value(v)}" for k, v in run.items() if k not in ("preset", "out")]
    sim = Simulator(
        load_config(preset="smoke", overrides=overrides), tmp_path / "sim-run", progress=False
    )
    initial = dict(sim.global_state)
    sim.run()

    final = load_file(out / "checkpoints" / "round-0002" / "adapter.safetensors")
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in initial), "adapter unchanged"
    ledger = json.loads((out / "checkpoints" / "round-0002" / "ledger.json").read_text())
    assert ledger == sim.ledger.to_json()
    summary = json.loads((out / "summary.json").read_text())
    latent_bytes = summary["communication"]["latent_dim"] * 4
    assert summary["communication"]["bytes_per_upload"] == latent_bytes
    rows = schema.load_metrics(out / "metrics.jsonl")
    rounds = schema.rounds(rows)
    # The server takes a reply only if it holds the latent and the fingerprint and nothing
    # else (a loss or any metric makes it malformed): every reply of both rounds did.
    assert [r["participants"] for r in rounds] == [[0, 1], [0, 1]]
    assert all(not r["failed"] for r in rounds)
    for r in rounds:  # measured on the latents that arrived
        assert r["bytes_up"] == len(r["participants"]) * latent_bytes
        assert "not_covered_by_epsilon" not in r and "loss" not in r  # never uploaded
    stage1 = next(r for r in rows if r["kind"] == "stage1")
    assert stage1["clients"] == 2 and "not_covered_by_epsilon" not in stage1

    # Each node's own ledger: the stage-1 release and both rounds, under replace-one.
    sigma, sigma_s = summary["privacy"]["noise_multiplier"], sim.release.noise_multiplier
    for path in ledgers:
        assert path.exists(), federation.logs()
        node = PrivacyLedger.load(path)
        assert node.charges() == {"statistics": 1, "round": 2}
        assert [(e.kind, e.round, e.event) for e in node.entries] == [
            ("statistics", None, dp_accounting.GaussianDpEvent(sigma_s)),
            ("round", 1, dp_accounting.GaussianDpEvent(sigma)),
            ("round", 2, dp_accounting.GaussianDpEvent(sigma)),
        ]
    assert elapsed < 240
    print(f"flower e2e: {elapsed:.0f} s")
