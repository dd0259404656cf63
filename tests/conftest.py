"""Shared pytest settings: small thread counts so the suite behaves on a 2-core machine, and
the Hypothesis profiles: "ci" (the default: a fixed seed, a modest budget) and "deep" (more
examples, random seeds), chosen with S2I_HYPOTHESIS_PROFILE."""

from __future__ import annotations

import os

from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "2")

settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("S2I_HYPOTHESIS_PROFILE", "ci"))
