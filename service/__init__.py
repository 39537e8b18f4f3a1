"""fluxhook: push, not polling, for the Black Forest Labs FLUX image API."""
