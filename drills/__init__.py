"""Drills: long runs against a real `gpucap ledger serve`, outside the test suite."""
