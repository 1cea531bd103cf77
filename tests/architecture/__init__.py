"""Checks of the layout itself (package boundaries, module sizes, Lua scripts, key ownership) and the generator of
docs/architecture.md."""
