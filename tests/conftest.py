"""Makes the project's collection (modules, module_utils, filters), tests/ and scripts/ importable by the tests."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in ("tests", "scripts"):
    path = os.path.join(REPO, folder)
    if path not in sys.path:
        sys.path.insert(0, path)

import project_modules  # noqa: E402

project_modules.register()


def pytest_configure(config):
    config.addinivalue_line("markers", "every_step: the slow fault cases (a kill -9 at every step); make faults runs them")
