"""`make docker-smoke`: the Docker deployment (docker/) built and run on this machine, end to end.

Its own dockerd (engine.py), the official base images or local stand-ins (images.py), web + workers + beat +
Postgres + Redis from docker/compose.host.yaml, the load generator through them, and a teardown that leaves
the machine as it found it (smoke.py)."""
