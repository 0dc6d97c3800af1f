"""Build Hive advisor: answers IDENTIFY with ADVICE from a pluggable suggest_role() policy."""
