"""The lines that load an export, for the model card and the ``load_adapters.py`` snippet."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.export.adapter import ExportFormat
from engine.export.card import Snippet

SCRIPT = "load_adapters.py"


@dataclass
class Layout:
    """What an export wrote, relative to its folder ``out``."""

    fmt: ExportFormat
    out: str
    base: str
    lora_files: list[tuple[str, str]] = field(default_factory=list)        # (adapter name, file)
    peft_folders: list[tuple[str, str, str]] = field(default_factory=list)  # (component, adapter name, folder)
    classes: dict[str, str] = field(default_factory=dict)  # component -> transformers class (model_index.json)


def _diffusers_lines(layout: Layout) -> list[str]:
    lines = ["import torch", "from diffusers import DiffusionPipeline", "",
             f"pipe = DiffusionPipeline.from_pretrained({layout.base!r}, dtype=torch.bfloat16)"]
    for name, file in layout.lora_files:
        lines.append(f"pipe.load_lora_weights({layout.out!r}, weight_name={file!r}, adapter_name={name!r})")
    for component, name, folder in layout.peft_folders:
        lines.append(f"pipe.{component}.load_adapter({layout.out + '/' + folder!r}, adapter_name={name!r})")
    names = list(dict.fromkeys(n for n, _ in layout.lora_files))
    if len(names) > 1:
        lines += ["# every edit on; leave a name out to switch that edit off",
                  f"pipe.set_adapters({names!r})"]
    for component in dict.fromkeys(c for c, _, _ in layout.peft_folders):
        own = [n for c, n, _ in layout.peft_folders if c == component]
        if len(own) > 1:  # transformers activates a list of adapters together
            lines.append(f"pipe.{component}.set_adapter({own!r})")
    if layout.lora_files:
        lines.append("# pipe.unload_lora_weights() puts the base weights back exactly")
    for component in dict.fromkeys(c for c, _, _ in layout.peft_folders):
        lines.append(f"# pipe.{component}.disable_adapters() switches its PEFT part off")
    return lines


def snippets(layout: Layout) -> list[Snippet]:
    """diffusers, transformers and ComfyUI loading lines for this export."""
    out, base = layout.out, layout.base
    if layout.fmt is ExportFormat.MERGED:
        return [
            Snippet("diffusers", "python", "import torch\nfrom diffusers import DiffusionPipeline\n\n"
                    f"pipe = DiffusionPipeline.from_pretrained({out!r}, dtype=torch.bfloat16)"),
            Snippet("transformers", "python", "from transformers import AutoModel\n\n"
                    f"text_encoder = AutoModel.from_pretrained({out!r}, subfolder='text_encoder')"),
            Snippet("ComfyUI", "text", "Copy text_encoder/model.safetensors (and text_encoder_2/... where there is one)\n"
                    "into ComfyUI/models/text_encoders/ and select it in a CLIPLoader / DualCLIPLoader node."),
        ]
    if layout.fmt is ExportFormat.DELTAS:
        return [
            Snippet("refact-tui", "shell", f"refact apply-deltas {out}/manifest.json --model {base} --out EDITED"),
            Snippet("diffusers", "python", "from diffusers import DiffusionPipeline\n\n"
                    "pipe = DiffusionPipeline.from_pretrained('EDITED')  # the folder apply-deltas wrote"),
            Snippet("transformers", "python", "from transformers import AutoModel\n\n"
                    "text_encoder = AutoModel.from_pretrained('EDITED', subfolder='text_encoder')"),
            Snippet("ComfyUI", "text", "Apply the deltas first (above), then load EDITED as a merged export."),
        ]
    found = [Snippet("diffusers", "python", "\n".join(_diffusers_lines(layout)))]
    peft = [f"{component}.load_adapter({out + '/' + folder!r}, adapter_name={name!r})"
            for component, name, folder in layout.peft_folders]
    components = list(dict.fromkeys(c for c, _, _ in layout.peft_folders))
    classes = sorted({layout.classes.get(c, "AutoModel") for c in components})
    found.append(Snippet("transformers", "python", "\n".join(
        [f"from transformers import {', '.join(classes)}", "",
         *(f"{c} = {layout.classes.get(c, 'AutoModel')}.from_pretrained({base!r}, subfolder={c!r})"
           for c in components), *peft]
        if peft else ["# the CLIP edits are in the diffusers file above; for transformers alone export",
                      "# with `refact export OUT --format peft` and call encoder.load_adapter(folder)"])))
    files = [f for _, f in layout.lora_files]
    if layout.fmt is ExportFormat.KOHYA:
        comfy = (f"Copy {', '.join(files)} into ComfyUI/models/loras/ and add a LoraLoader node per file "
                 "(strength_model 1.0, strength_clip 1.0); A1111: models/Lora, <lora:NAME:1>.")
    else:
        comfy = ("ComfyUI and A1111 read the kohya naming: run `refact export OUT --format kohya` for the "
                 "CLIP / UNet edits and copy that file into ComfyUI/models/loras/ (LoraLoader, strength 1.0).")
    if layout.peft_folders:
        comfy += "\nThe T5 / LLM encoder edits (PEFT folders) have no ComfyUI loader; merge them instead."
    found.append(Snippet("ComfyUI", "text", comfy))
    return found


def script(layout: Layout) -> str:
    """A runnable ``load_adapters.py`` that loads every file of the export onto the base pipeline."""
    body = "\n".join(_diffusers_lines(layout))
    return f'"""Load this refact-tui export onto its base pipeline (written by `refact export`)."""\n\n{body}\n'
