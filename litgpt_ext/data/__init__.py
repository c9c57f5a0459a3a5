"""litgpt DataModules for this toolchain's data formats. Importing them here makes ``--data SFTData`` /
``--data PreferenceData`` resolvable by name on the command line, like litgpt's own DataModules."""

from litgpt_ext.data.preference import PreferenceData
from litgpt_ext.data.sft import SFTData

__all__ = ["PreferenceData", "SFTData"]
