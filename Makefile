# make demo  : set up .venv and run the whole main job on the built-in sample data
# make test  : set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test sample clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py
	$(PY) test.py
	$(PY) autoencoder.py
	$(PY) cluster.py
	$(PY) style_transfer.py --evaluate
	@echo "plots and metrics: out/classifier out/autoencoder out/cluster out/style_transfer"

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

sample: $(VENV)/.installed
	$(PY) sample_data.py

clean:
	rm -rf out cache data/sample
