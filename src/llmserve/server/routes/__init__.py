"""One endpoint group per module."""
