"""The Textual shell: a thin UI over refact_tui.services and the store's read-model."""
