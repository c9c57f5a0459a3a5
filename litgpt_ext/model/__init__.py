"""Where this toolchain reaches into litgpt's ``GPT``: what it changes, and when."""
