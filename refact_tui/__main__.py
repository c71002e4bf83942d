"""`python -m refact_tui ...` runs the `refact` CLI."""

from refact_tui.cli.main import run

if __name__ == "__main__":
    run()
