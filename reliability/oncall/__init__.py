"""Who is on call: rotations from the config (`rotation.py`), overrides in the database
(`models.py`, `service.py`), and `reliability oncall ...` (`cli.py`)."""
