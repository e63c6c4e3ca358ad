"""Subcommands of the ``prompt-diffusion`` command line, one module each (see ``cli.py``)."""
