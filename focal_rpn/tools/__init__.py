"""Command-line tools: thin modules over the library (``python -m focal_rpn.tools.<name>``)."""
