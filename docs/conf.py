"""Sphinx configuration of lrpfast's documentation (build: see the README)."""
project = "lrpfast"
author = "lrpfast developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "examples"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
html_theme = "alabaster"
html_static_path = ["_static"]
suppress_warnings = ["myst.header"]
nitpicky = False
napoleon_use_ivar = True
