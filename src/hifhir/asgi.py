"""ASGI entry point for uvicorn workers: `uvicorn hifhir.asgi:app`."""

from hifhir.api.app import create_app

app = create_app()
