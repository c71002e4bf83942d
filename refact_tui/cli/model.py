"""`refact model ...`: build tiny / full-shape random pipelines of every family for offline work and tests."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import console

model_app = typer.Typer(help="Model folders.", no_args_is_help=True)

ARCH_HELP = (
    "sd1 (StableDiffusionPipeline, CLIP-L) | sd2 (StableDiffusionPipeline, OpenCLIP-H) | "
    "sdxl (CLIP-L + bigG) | sd3 (CLIP-L + bigG + T5-XXL) | flux (CLIP-L + T5-XXL) | "
    "z-image (ZImagePipeline, Qwen3) | flux2-klein (Flux2KleinPipeline, Qwen3, hidden_states 9/18/27) | "
    "lumina2 (Lumina2Pipeline, Gemma-2) | qwen-image (QwenImagePipeline, Qwen2.5-VL) | pixart-sigma (PixArtSigmaPipeline, T5-XXL) | chroma (ChromaPipeline, T5-XXL) | "
    "sana (SanaPipeline, Gemma-2, instruction prefix) | cogview4 (CogView4Pipeline, GLM-4, left-padded) | "
    "flux2 (Flux2Pipeline, Mistral3 text part, hidden_states 10/20/30) | "
    "hidream (HiDreamImagePipeline, CLIP-L + bigG + T5 + Llama-3.1)."
)
SIZE_HELP = (
    "tiny: seconds on CPU, under 1 GB RAM (tests, demos). full: the real text-encoder shapes "
    "(and SD1/SD2's real UNet and VAE; SDXL/SD3/FLUX get a small denoiser with the real conditioning "
    "widths). RAM for full, fp32 / bf16: sd1 4 / 2 GB, sd2 5 / 2.5 GB, sdxl 3.5 / 2 GB, "
    "sd3 21 / 11 GB, flux 19 / 9.5 GB (T5-XXL alone is 4.76 B parameters); disk about the same. "
    "The 2026 families (z-image, flux2-klein, lumina2, qwen-image, pixart-sigma, chroma, sana, cogview4) are tiny only: a full "
    "build needs the real encoder (Qwen3-4B 8 GB, Qwen3-8B 16 GB, Gemma-2-2B 5 GB, Qwen2.5-VL-7B 16 GB, GLM-4-9B 19 GB, T5-XXL "
    "9.5 GB in bf16) and a "
    "2-12 B-parameter denoiser; load the published pipeline folder instead. flux2 and hidream are tiny only too: "
    "FLUX.2 [dev] needs Mistral-Small-3.1-24B (48 GB in bf16) and a 32 B denoiser, HiDream-I1 two CLIPs, T5-XXL "
    "and Llama-3.1-8B (16 GB in bf16) and a 17 B denoiser."
)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model", rich_help_panel="Workspace")


@model_app.command("build")
def build(
    path: Path = typer.Argument(..., help="Folder to write the pipeline into (new or empty)."),
    arch: str = typer.Option("sd1", "--arch", help=ARCH_HELP),
    size: str = typer.Option("tiny", "--size", help=SIZE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (halves RAM and disk)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Build a complete diffusers pipeline folder with random weights (no download).

    The folder loads offline with ``DiffusionPipeline.from_pretrained(PATH, local_files_only=True)``
    and with ``refact init --model PATH``.
    """
    from engine.builder import ARCHS, DTYPES, SIZES, build_pipeline

    for name, value, choices in (("--arch", arch, ARCHS), ("--size", size, SIZES), ("--dtype", dtype, DTYPES)):
        if value not in choices:
            raise typer.BadParameter(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    with console.status(f"building a {size} {arch} pipeline"):
        out = build_pipeline(path, size=size, seed=seed, arch=arch, dtype=dtype)
    console.print(f"built a {size} {arch} pipeline at [bold]{out}[/]")
