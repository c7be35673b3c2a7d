"""The app for Celery's own CLI (`celery -A rcbatch.worker.celery_cli flower|inspect ...`).

Importing this module is an edge: it reads the settings once and configures the app, so
Flower and `inspect` use the same RCBATCH_* settings as `rcbatch worker`. (No beat is needed:
every worker runs the clock, worker/lease.py; a beat started anyway does no harm.)
"""

from rcbatch.config import load_settings
from rcbatch.worker.celery_app import configure

app = configure(load_settings())
