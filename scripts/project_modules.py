"""Makes the project's Ansible modules importable outside Ansible (tests, benchmark scripts).

Ansible resolves `ansible.module_utils.stage4_postgres` from ./module_utils when it runs a module;
importing a module from library/ directly needs that name registered first.
"""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register():
    """Put library/ and filter_plugins/ on sys.path and register the project's module_utils."""
    for folder in ("library", "filter_plugins"):
        path = os.path.join(REPO, folder)
        if path not in sys.path:
            sys.path.insert(0, path)
    import ansible.module_utils  # noqa: F401,PLC0415  (the parent package must be loaded before its child is registered)

    for name in sorted(os.listdir(os.path.join(REPO, "module_utils"))):
        if not name.endswith(".py"):
            continue
        full_name = "ansible.module_utils." + name[:-3]
        if full_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full_name, os.path.join(REPO, "module_utils", name))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full_name] = module
        spec.loader.exec_module(module)
