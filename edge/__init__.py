"""doorface on-device runtime: camera -> detect -> align -> embed -> match -> track -> publish."""

__version__ = "0.1.0"
