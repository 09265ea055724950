"""Property-based tests here check behaviour, not speed: no per-example deadline (the machine
running them, mutation testing above all, may be loaded)."""

from hypothesis import settings

settings.register_profile("flows", deadline=None)
settings.load_profile("flows")
