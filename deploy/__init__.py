"""What the Makefile's stack targets run. Standard library only (but ``deploy.reload``), so the
scripts can run it before the virtualenv exists (``.ci/run``) and in the slim container image."""
