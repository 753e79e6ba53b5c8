"""Makes the project's modules, module_utils and filter plugins importable by the tests.

Ansible resolves `ansible.module_utils.stage4_postgres` from ./module_utils when it runs a
module; the tests import the modules directly, so the same name is registered here.
"""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in ("tests", "library", "filter_plugins"):
    path = os.path.join(REPO, folder)
    if path not in sys.path:
        sys.path.insert(0, path)

import ansible.module_utils  # noqa: E402,F401  (the parent package must be loaded before its child is registered)

_spec = importlib.util.spec_from_file_location("ansible.module_utils.stage4_postgres",
                                               os.path.join(REPO, "module_utils", "stage4_postgres.py"))
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)
