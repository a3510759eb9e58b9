import sys

from tests.load.cli import main

sys.exit(main())
