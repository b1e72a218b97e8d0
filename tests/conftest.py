import os

# Every test, and every notebook kernel nbval starts, runs in the smoke profile.
os.environ.setdefault("FTKIT_PROFILE", "smoke")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exercise checks in the notebooks (with their solutions) must pass: anything else raises (ftkit.exercises).
os.environ.setdefault("FTKIT_CHECKS", "strict")

import pytest  # noqa: E402

import ftkit  # noqa: E402,F401  (probes the Hub before transformers is imported)


@pytest.fixture(scope="session")
def cfg():
    return ftkit.setup("smoke", verbose=False)
