"""Test-support code shared by test modules and bench/ scripts."""
