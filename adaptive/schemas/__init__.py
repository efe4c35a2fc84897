"""JSON Schemas of the profile formats."""
