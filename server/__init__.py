"""Stories server: short photo and video segments that disappear after their lifetime.

The package is flat, one module per concept. Bottom layers (`errors`, `clock`,
`keys`, `settings`) import nothing from the package; `app` composes the rest.
"""

__version__ = "0.1.0"
