"""Shared pytest settings: small thread counts so the suite behaves on a 2-core machine, and
the Hypothesis profiles of the fuzz tests: ``ci`` (the default: a fixed seed, 200 examples
per test) and ``deep`` (random seeds, 5,000 examples), chosen with
``--hypothesis-profile=deep`` or ``S2I_HYPOTHESIS_PROFILE=deep``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("OMP_NUM_THREADS", "2")

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("S2I_HYPOTHESIS_PROFILE", "ci"))
