"""Makes the project's collection, biblioteca.stage4, importable outside Ansible (tests, benchmark scripts).

Its modules, module_utils and filters then import as
`ansible_collections.biblioteca.stage4.plugins.<kind>.<name>`, the names Ansible gives them.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register():
    """Put the repository root, which holds ansible_collections/biblioteca/stage4, on sys.path."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
