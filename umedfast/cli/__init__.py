"""Command-line entry points, one module per command: ``train`` (umedfast-train), ``data`` (umedfast-data),
``eval`` (umedfast-eval). ``python -m umedfast.cli`` (and ``torchrun -m umedfast.cli``) is umedfast-train.

Each command refuses bad input in one line before torch loads, so its heavy imports sit inside functions.
"""


def train_main(argv=None) -> int:
    """umedfast-train; kept for console scripts installed before the CLIs moved here (``umedfast.cli:train_main``)."""
    from umedfast.cli.train import main  # here, not at the top: `umedfast-data` must not load the trainers

    return main(argv)
