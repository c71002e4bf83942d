"""Widgets of the TUI, one small file per domain."""
