"""The runtime: channel adapters, the dispatcher, the composition root and the command line."""
