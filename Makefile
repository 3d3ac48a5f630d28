# The two set-up commands (see README):
#   make train   install, then run the default job (tiny NextLat model, built-in corpus)
#   make test    install with the test tools, then run the whole test suite
VENV ?= .venv

.PHONY: train test test-fast lint test-slurm
train:
	bash scripts/install.sh
	$(VENV)/bin/nextlat-pt train

test:
	bash scripts/install.sh --test
	$(VENV)/bin/python -m pytest -q

test-fast:  # the inner loop: unit tests only (-m "not slow"), a few minutes
	bash scripts/install.sh --test
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint:
	$(VENV)/bin/ruff check nextlat_pt tests bench

test-slurm:  # the real two-node Slurm cluster tests alone (root; installs slurm with apt-get)
	bash scripts/install.sh --test
	$(VENV)/bin/python -m pytest -q -s -m slurm
