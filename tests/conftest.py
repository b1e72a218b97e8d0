import os

# Every test, and every notebook kernel nbval starts, runs in the smoke profile.
os.environ.setdefault("FTKIT_PROFILE", "smoke")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import ftkit  # noqa: E402,F401  (probes the Hub before transformers is imported)


@pytest.fixture(scope="session")
def cfg():
    return ftkit.setup("smoke", verbose=False)
