from __future__ import annotations

import pytest

from sepconv.targets import resolve_target


@pytest.fixture(scope="session")
def host():
    """This machine's target: the int8 operators choose their instruction from its features."""
    return resolve_target("host").target
