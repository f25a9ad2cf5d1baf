"""The WSGI entry point for gunicorn: ``gunicorn plugin.wsgi:app``."""

from .app import create_app
from .logs import configure
from .settings import Settings

settings = Settings.from_env()
configure(production=settings.production)
app = create_app(settings)
