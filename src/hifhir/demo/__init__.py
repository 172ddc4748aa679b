"""Demo data: the openIMIS demo scheme (through the API write path) and a bulk synthetic population."""

from __future__ import annotations

from hifhir.demo.population import generate_population
from hifhir.demo.scheme import load_demo_scheme

__all__ = ["generate_population", "load_demo_scheme"]
