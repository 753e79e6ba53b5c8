"""The fault and gate suites' cluster: one throwaway cluster per test module, with the reference database."""
import pytest

import pgcluster
from stage4_runs import FEATURES


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.build_reference_db("BIBLIOTECA", features=FEATURES)
        yield running
