"""``python -m bench`` and the ``bench`` console script.

Re-executes once with the malloc settings of bench.tuning before anything heavy
is imported, then runs the Typer app."""
from __future__ import annotations


def main() -> None:
    from bench.tuning import reexec_tuned

    reexec_tuned("bench")
    from bench.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
