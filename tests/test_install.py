"""What `make` installs is what was tested: requirements.lock holds every package at an exact
version, agrees with requirements.txt's direct pins, and is what this venv has."""

from __future__ import annotations

import re
from importlib import metadata

from conftest import REPO


def pins(path) -> dict[str, str]:
    """{normalized name: version} of `name==version` lines (comments and blanks skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not name==version"
            found[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return found


def test_the_lock_pins_every_direct_requirement_at_its_version():
    direct, locked = pins(REPO / "requirements.txt"), pins(REPO / "requirements.lock")
    assert len(locked) > 100  # everything they pull in, not only the direct pins
    assert {name: locked.get(name) for name in direct} == direct


def test_this_venv_is_the_lock():
    """A package installed by hand at another version (or missing) shows here: the suite then
    tests something other than what `make` installs."""
    wrong = {}
    for name, version in pins(REPO / "requirements.lock").items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"locked vs installed: {wrong}"
