"""The suite refuses to run without the [dev] extras instead of skipping the reference-equivalence tests."""

from __future__ import annotations

import pytest

from tests.conftest import dev_requirements, missing_requirements


def test_dev_extras_list_the_reference_implementations() -> None:
    from packaging.requirements import Requirement

    names = {Requirement(r).name for r in dev_requirements()}
    assert {"pytest", "transformers", "lightly", "einops"} <= names


def test_absent_or_too_old_packages_are_reported_as_missing() -> None:
    missing = missing_requirements(["geomed-ssl-no-such-package>=1", "pytest>=999", "numpy>=1"])
    assert missing[0] == "geomed-ssl-no-such-package>=1 (not installed)"
    assert missing[1].startswith("pytest>=999 (found ") and len(missing) == 2


def test_a_missing_dev_package_fails_the_session_naming_the_install_command(monkeypatch) -> None:
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "dev_requirements", lambda: ["geomed-ssl-no-such-package>=1", "pytest>=7"])
    with pytest.raises(pytest.UsageError, match=r'missing: geomed-ssl-no-such-package>=1 \(not installed\)\. '
                                                 r'Install them with `pip install -e "\.\[dev\]"`'):
        conftest.pytest_configure(None)
