"""litgpt_ext: the model side of the distillation toolchain, written in litgpt's own idiom.

Commands are registered through the entry-point group ``litgpt_ext.commands`` and served by ``litgpt-ext``,
a CLI whose command table is litgpt's own plus those extensions.
"""

__version__ = "0.1.0"
