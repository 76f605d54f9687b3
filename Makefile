# Two commands on a fresh Debian machine with Python 3.11:  make demo  |  make test
# Both create .venv, install the pinned package, and install Debian's Fashion-MNIST when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WORKDIR ?= workdir/fashion_mnist

.PHONY: setup demo test clean device-wheels

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

setup: $(VENV)/.installed $(FMNIST)

demo: setup
	$(PY) -m ijepa_jax.main --config=configs/fashion_mnist.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest tests

# The packages a lent GPU machine (Python 3.12, no package index) lacks, as wheels to carry there for
# experiments/device_check.sh; the pins are pyproject.toml's.
device-wheels: setup
	$(PY) -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_28_x86_64 -d experiments/wheels grain==0.2.18 ml_collections==1.1.0 tensorboardX==2.6.5

clean:
	rm -rf $(VENV) workdir
