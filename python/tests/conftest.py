import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples", "python")
GOLDEN = os.path.join(ROOT, "tests", "golden")
sys.path.insert(0, EXAMPLES)


@pytest.fixture
def root():
    return ROOT
