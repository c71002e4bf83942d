"""CLI start-up: commands that need no model never import torch (rule in refact_tui/cli/__init__.py);
`--version`, shell completion and the help conventions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from refact_tui.cli import HEAVY_MODULES
from refact_tui.cli.main import app

runner = CliRunner()
# Runs the CLI in a fresh interpreter and prints which heavy modules it imported (JSON, last line).
PROBE = (
    "import json, sys\n"
    "from refact_tui.cli.main import app\n"
    "try:\n"
    "    app(sys.argv[2:], standalone_mode=False)\n"
    "finally:\n"
    "    print(json.dumps([m for m in json.loads(sys.argv[1]) if m in sys.modules]))\n"
)


def heavy_imports(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY_MODULES), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("startup") / "w"
    result = runner.invoke(app, ["--workspace", str(root), "init", "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--workspace", str(root), "queue", "add", "--prompt", "A cat", "--source", "cat",
                                 "--target", "dog", "--layer", "2"])
    assert result.exit_code == 0, result.output
    return root


def test_queue_ls_and_history_do_not_import_torch(ws_root):
    assert heavy_imports("--workspace", ws_root, "queue", "ls", "--json") == []
    assert heavy_imports("--workspace", ws_root, "history", "--json") == []


def test_queue_add_and_import_count_tokens_without_torch(ws_root, tmp_path):
    """`refact init` stored the check of the torch-free tokenizer; adding and importing then load neither
    torch nor transformers, and the length check still refuses a prompt over CLIP's 77 tokens."""
    assert heavy_imports("--workspace", ws_root, "queue", "add", "-p", "A bird", "-s", "bird", "-t", "fish",
                         "--layer", "2") == []
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"A house {i}", "source": "a house", "target": "a boat"}) + "\n"
                            for i in range(2)), encoding="utf-8")
    assert heavy_imports("--workspace", ws_root, "queue", "import", rows, "--layer", "2") == []
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY_MODULES), "--workspace", str(ws_root),
                           "queue", "add", "-p", "word " * 80, "-s", "a", "-t", "b", "--layer", "2"],
                          capture_output=True, text=True, timeout=300)
    assert "(bare: 82), over the limit of 77" in done.stderr + done.stdout  # 80 words + BOS + EOS
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_probe_sees_torch_when_a_command_loads_a_model(tmp_path):
    assert heavy_imports("model", "build", "--help") == []
    assert "torch" in heavy_imports("model", "build", tmp_path / "tiny")


def test_version_completion_and_help_conventions():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"refact {version('refact-tui')}"
    top = runner.invoke(app, ["--help"]).stdout
    assert "--install-completion" in top and "--show-completion" in top and "<bool>" not in top
    add = " ".join(runner.invoke(app, ["queue", "add", "--help"]).stdout.replace("│", " ").split())
    assert "<bool>" not in add and "Example: refact queue add" in add
    assert "Default 0.05; range (0, 10]" in add and "Default 0.99; range (0, 1]" in add  # lr, prob_threshold
    assert "0.05 on encoders with normalised features" in add
