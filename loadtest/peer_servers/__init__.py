"""The peers ``python -m loadtest.peers`` measures against this project, each a small server.

* :mod:`.litserve_server`: LitServe serving the project's model with its preprocessing, run by
  the Python of a virtualenv of its own (:mod:`.venv` creates it on first use).
* :mod:`.plain_celery`: what one would write by hand: a Flask app under gunicorn that sends one
  Celery task per image and waits for it, and the worker task that classifies that one image.

They answer the locustfile's request (``POST /predict``, multipart field ``file``) with the
project's answer fields that the locustfile reads (``prediction``, ``predictions``). Importing
this package imports nothing heavy.
"""

__all__: list[str] = []
