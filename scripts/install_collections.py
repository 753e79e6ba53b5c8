#!/usr/bin/env python3
"""Installs the collections of requirements.yml into ./collections.

Galaxy first, as for any Ansible project. Where Galaxy cannot be reached (these build machines only
reach PyPI), each collection is taken from the `ansible` community package on PyPI, which carries
the same collection releases: community.postgresql 4.2.0 is in ansible 12.3.0.

    scripts/install_collections.py [--force]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, "collections")
# The `ansible` package release that carries each pinned collection version.
ANSIBLE_PACKAGE_FOR = {("community.postgresql", "4.2.0"): "12.3.0"}


def installed_version(name):
    manifest = os.path.join(COLLECTIONS, "ansible_collections", *name.split("."), "MANIFEST.json")
    if not os.path.exists(manifest):
        return None
    with open(manifest, encoding="utf-8") as handle:
        return json.load(handle)["collection_info"]["version"]


def from_galaxy(galaxy, name, version):
    return subprocess.run([galaxy, "collection", "install", f"{name}:=={version}", "-p", COLLECTIONS],
                          capture_output=True, text=True, timeout=120).returncode == 0


def from_pypi(galaxy, name, version):
    package = ANSIBLE_PACKAGE_FOR.get((name, version))
    if package is None:
        sys.exit(f"install_collections: Galaxy is unreachable and no `ansible` release is known to carry {name} {version}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp,
                        f"ansible=={package}"], check=True)
        wheel = next(f for f in os.listdir(tmp) if f.endswith(".whl"))
        prefix = "ansible_collections/" + name.replace(".", "/") + "/"
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as archive:
            archive.extractall(tmp, [m for m in archive.namelist() if m.startswith(prefix)])
        subprocess.run([galaxy, "collection", "install", "--force", os.path.join(tmp, prefix), "-p", COLLECTIONS],
                       check=True, capture_output=True, text=True)


def main(argv):
    force = "--force" in argv
    galaxy = shutil.which("ansible-galaxy", path=os.path.dirname(sys.executable)) or "ansible-galaxy"
    with open(os.path.join(REPO, "requirements.yml"), encoding="utf-8") as handle:
        wanted = yaml.safe_load(handle)["collections"]
    for item in wanted:
        name, version = item["name"], str(item["version"])
        if not force and installed_version(name) == version:
            continue
        source = "Galaxy" if from_galaxy(galaxy, name, version) else None
        if source is None:
            from_pypi(galaxy, name, version)
            source = f"the ansible {ANSIBLE_PACKAGE_FOR[(name, version)]} package on PyPI"
        print(f"install_collections: {name} {installed_version(name)} from {source}")


if __name__ == "__main__":
    main(sys.argv[1:])
