"""Kept only so that `from test_autoencoder import ae_args` (in tests written before the regrouping)
still works: ae_args lives in conftest.py; the autoencoder tests are in test_models.py and
test_scripts.py. Delete this file once nothing imports it."""
from conftest import ae_args  # noqa: F401
