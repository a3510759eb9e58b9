"""Entry point of `python -m inference`; the commands live in inference.cli."""

import sys

from inference.cli import main

sys.exit(main())
