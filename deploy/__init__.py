"""Operations helpers behind the Makefile: ``make up``, ``make down``, ``make test``.

Standard library only, so the scripts can run them before the virtualenv
exists (``.ci/run``) and inside the slim container image.
"""
