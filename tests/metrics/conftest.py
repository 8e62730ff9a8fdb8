"""The election tests' fake clock and memory server, for the metrics tests."""

from tests.election.conftest import clock, config, drive, make_election, server

__all__ = ["clock", "config", "drive", "make_election", "server"]
