"""Screens (one per mode) and modal dialogs."""
