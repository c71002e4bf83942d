"""The `refact` command line (Typer), a thin shell over refact_tui.services.

Start-up rule (the one place it is written down): `refact --help` and the commands that need no model
(`queue ls`, `history`, `histories`, `show`, `checkout`, `bench ls`, `bench show`, `doctor`) never
import a module of ``HEAVY_MODULES``. So command modules import their services inside the command
function, and the few services / engine modules those commands reach import torch only inside the
functions that compute with it (engine.files.save_safetensors_atomic, engine.evaluation.scoring's
pair_probs*, services.queue.default_hparams), each with a comment naming this rule.
tests/test_cli_startup.py checks it in a subprocess; benchmarks/cli_startup.py times every command.
"""

HEAVY_MODULES = ("torch", "transformers", "diffusers", "open_clip", "accelerate")
