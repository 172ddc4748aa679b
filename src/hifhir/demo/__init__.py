"""Demo data: the openIMIS demo scheme (through the API write path), a bulk synthetic population and a synthetic
medical catalogue."""

from __future__ import annotations

from hifhir.demo.catalogue import generate_catalogue
from hifhir.demo.population import generate_population
from hifhir.demo.scheme import load_demo_scheme

__all__ = ["generate_catalogue", "generate_population", "load_demo_scheme"]
