"""The peers ``python -m loadtest.peers`` measures against: LitServe (in a virtualenv of its own) and
Flask + one Celery task per image, each answering the locustfile's request with the project's fields."""
