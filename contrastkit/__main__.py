"""``python -m contrastkit`` — what ``torchrun ... -m contrastkit train ...`` runs."""

import sys

from contrastkit.cli import main

sys.exit(main())
