# One image for the web app, nginx in front of it, the Celery worker and Flower;
# compose.yaml picks the command. Build: docker compose build (or docker build -t celery-inference .)
FROM python:3.11-slim

# PYTHONPATH: celeryconfig.py is a top-level module, not in the installed package.
# BIND_HOST, WEB_UPSTREAM: nginx and gunicorn listen on all interfaces of the
# container (loopback, the default outside one, is unreachable from other
# containers and through a published port). RUN_DIR: nginx's config and buffers.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/src \
    BIND_HOST=0.0.0.0 \
    WEB_UPSTREAM=0.0.0.0:8000 \
    RUN_DIR=/tmp/run

# nginx, in front of gunicorn (compose.yaml's nginx service).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/*

# PyPI's torch for Linux is the CUDA build (it also runs on CPUs). For a much
# smaller CPU-only image: --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_INDEX_URL=

WORKDIR /src

# Dependencies first, in their own layer, so that editing the sources does not
# reinstall torch: install the project from its metadata and empty packages,
# then remove the project itself and keep its dependencies.
COPY setup.cfg pyproject.toml README.md ./
RUN mkdir -p common webapp workers batching loadtest \
 && touch common/__init__.py webapp/__init__.py workers/__init__.py batching/__init__.py loadtest/__init__.py \
 && pip install . \
 && pip uninstall -y celery-inference-cluster \
 && rm -rf common webapp workers batching loadtest build ./*.egg-info

COPY . .
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Run as an unprivileged user; its home holds the torch/timm caches.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app

EXPOSE 8000 5555 9808
CMD ["python", "-m", "deploy.stack", "exec", "web"]
