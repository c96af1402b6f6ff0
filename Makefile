# make demo  : set up .venv and run the whole main job on the built-in sample data
# make test  : set up .venv and run the test suite (everything, as CI does)
# make test-fast : all but the slow end-to-end runs (pytest -m "not slow")
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast sample clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-compile -r requirements.txt
	@# bytecode on every core (pip compiles on one), skipping the ~2,600 transformers model files never
	@# imported; `|| true`: a few files are for newer Pythons (pip skips those as well)
	$(PY) -m compileall -q -j 0 -x 'transformers/models/(?!auto/|clip/|encoder_decoder/)' $(VENV)/lib > /dev/null || true
	touch $@

DEMO_IMAGES = data/sample/test/Impressionism/0000.png data/sample/test/Baroque/0000.png \
              data/sample/test/Ukiyo_e/0000.png data/sample/test/Pop_Art/0000.png

demo: $(VENV)/.installed
	$(PY) train.py
	$(PY) test.py
	$(PY) test.py --image $(DEMO_IMAGES)
	$(PY) autoencoder.py
	$(PY) autoencoder.py --image $(DEMO_IMAGES)
	$(PY) cluster.py
	$(PY) style_transfer.py
	$(PY) style_transfer.py --evaluate
	$(PY) style_transfer.py --image $(DEMO_IMAGES) --style all
	@echo "plots and metrics: out/classifier (predictions/: your images) out/autoencoder (reconstruct/) out/cluster out/style_transfer (stylised/)"

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not slow" tests

sample: $(VENV)/.installed
	$(PY) sample_data.py

clean:
	rm -rf out cache data/sample
