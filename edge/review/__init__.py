"""Reviewing who came to the door: ``doorface visits``, ``doorface visitors`` and the ``doorface serve`` page."""
