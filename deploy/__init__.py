"""What the Makefile's stack targets run: standard library only (but ``deploy.reload``), like the scripts."""
