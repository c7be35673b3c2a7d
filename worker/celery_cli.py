"""The app for Celery's own CLI (`celery -A rcbatch.worker.celery_cli beat|flower|inspect ...`).

Importing this module is an edge: it reads the settings once and configures the app, so
beat and Flower use the same RCBATCH_* settings as `rcbatch worker`.
"""

from rcbatch.config import load_settings
from rcbatch.worker.celery_app import configure

app = configure(load_settings())
