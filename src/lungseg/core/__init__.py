"""What every stage uses and nothing of lungseg's own: errors, settings from YAML and flags, atomic
files and the user cache, locks, progress bars, device and thread policy, template rendering.

Imports nothing from the other packages (``tests/test_layout.py`` checks it).
"""
