"""litgpt DataModules for this toolchain's data formats: ``SFTData``, ``PreferenceData``, ``OrmData``.

They are imported lazily (``from litgpt_ext.data import SFTData`` still works), so that commands which only read
records — and the modules here that do — do not pay for importing litgpt and Lightning. The finetune commands import
all three, which makes ``--data SFTData`` / ``--data PreferenceData`` / ``--data OrmData`` resolvable by name on the
command line, like litgpt's own DataModules.
"""

from importlib import import_module

_MODULES = {"OrmData": "orm", "PreferenceData": "preference", "SFTData": "sft"}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(import_module(f"litgpt_ext.data.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
