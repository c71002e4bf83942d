"""Writing a history's deltas in the formats models are served with, and reading them back.

``adapter`` stacks deltas into LoRA factors and says which loader can reach each matrix; ``lora``
(diffusers), ``kohya`` (ComfyUI / A1111 naming) and ``peft`` (transformers ``load_adapter`` folders)
each write and read one format; ``card`` renders the model card every export carries.
"""
