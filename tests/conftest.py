"""Shared test configuration: Hypothesis profiles and paths to optional data.

Profiles: "dev" (the default: more examples, randomized) and "ci" (bounded, derandomized,
no deadline: timings on shared 2-core machines are noise), selected when CI=true.
Choose one explicitly with HYPOTHESIS_PROFILE=name.
"""
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import tensor.fast

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
_default = "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))

# ../shared beside the checkout holds the benchmark text; tests that need it skip without it.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def reference_ops_unless_asked():
    """Every test starts on the reference ops: a test (or a CLI's main() run in-process)
    that switched tensor.fast on must not leave it on for the next test."""
    yield
    tensor.fast.disable()
