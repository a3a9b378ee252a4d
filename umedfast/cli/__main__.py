"""``python -m umedfast.cli`` / ``torchrun -m umedfast.cli``: umedfast-train."""
import sys

from umedfast.cli.train import main

sys.exit(main())
