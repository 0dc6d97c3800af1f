"""Build Hive agent: joins the hive, owns identity and membership; also the wire protocol,
state files and the `hive` CLI shared with build_advisor."""

__version__ = "0.1.0"
