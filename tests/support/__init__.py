"""What the tests share, in one place: the cast of people (people.py), stored readings (readings.py), polling
until something happens (polling.py), and the real services the integration tests start (processes.py: plain
subprocesses, also used by the load tool; services.py: the pytest side of them)."""
