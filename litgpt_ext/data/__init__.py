"""litgpt DataModules for this toolchain's data formats (SFT now; preference and ORM data next)."""

from litgpt_ext.data.sft import SFTData

__all__ = ["SFTData"]
