"""HTTP endpoints, one blueprint per file."""
