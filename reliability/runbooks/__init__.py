"""Runbooks: scripted, audited, reversible fixes. spec (the YAML schema), load (the
directory), params (`--param k=v`), template/scope (placeholders), plan (what a run does)."""
