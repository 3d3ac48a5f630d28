# The two set-up commands (see README):
#   make train   install, then run the default job (tiny NextLat model, built-in corpus)
#   make test    install with the test tools, then run the whole test suite
VENV ?= .venv

.PHONY: train test lint test-slurm
train:
	bash scripts/install.sh
	$(VENV)/bin/nextlat-pt train

test:
	bash scripts/install.sh --test
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check nextlat_pt tests

test-slurm:  # the real two-node Slurm cluster tests alone (root; installs slurm with apt-get)
	bash scripts/install.sh --test
	$(VENV)/bin/python -m pytest -q -s tests/integration/test_slurm_script.py tests/integration/test_slurm.py
