"""Super-network and sub-network models (torch is imported only when these are used)."""
