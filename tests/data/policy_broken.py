"""A policy that does not load: it has no suggest_role."""

ROLE = "nothing"
