"""Test helpers shared by the suites: fakes, database fixtures, and running processes."""
