"""litgpt DataModules for this toolchain's data formats. Importing them here makes ``--data SFTData`` /
``--data PreferenceData`` / ``--data OrmData`` resolvable by name on the command line, like litgpt's own."""

from litgpt_ext.data.orm import OrmData
from litgpt_ext.data.preference import PreferenceData
from litgpt_ext.data.sft import SFTData

__all__ = ["OrmData", "PreferenceData", "SFTData"]
