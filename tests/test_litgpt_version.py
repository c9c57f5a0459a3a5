"""The installed litgpt is the one the replacement forwards were tested against (see litgpt_ext/model/litgpt_version.py):
a release that changes a method they re-implement fails here, by name, instead of passing every guard silently."""

from __future__ import annotations

from importlib.metadata import version

from litgpt_ext.model.litgpt_version import RELIED_ON, TESTED_LITGPT, changed, fingerprint


def test_the_relied_on_litgpt_methods_are_the_tested_ones():
    assert not changed(), (
        f"litgpt {version('litgpt')} changed {changed()} (tested against {TESTED_LITGPT}): re-run the equality tests "
        "against it, then update litgpt_ext/model/litgpt_version.py"
    )


def test_the_pin_admits_the_tested_release_only_within_its_minor_version():
    import tomllib

    from conftest import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("litgpt")]
    major, minor, _ = TESTED_LITGPT.split(".")
    assert pin == f"litgpt>={TESTED_LITGPT},<{major}.{int(minor) + 1}", pin
    assert version("litgpt") == TESTED_LITGPT


def test_a_changed_method_is_noticed(monkeypatch):
    import litgpt.model

    def forward(self, x):  # a litgpt release adding something to RMSNorm
        return x

    monkeypatch.setattr(litgpt.model.RMSNorm, "forward", forward)
    assert fingerprint("litgpt.model.RMSNorm.forward") != RELIED_ON["litgpt.model.RMSNorm.forward"]
    assert changed() == ["litgpt.model.RMSNorm.forward"]
