import sys

from tests.docker_smoke.smoke import main

sys.exit(main())
