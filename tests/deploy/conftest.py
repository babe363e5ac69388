"""Deployment tests reuse the API tests' app factory (``app_factory(database_url=db_url)``)."""

from tests.service.conftest import app_factory  # noqa: F401  (a fixture, re-exported for tests/deploy)
