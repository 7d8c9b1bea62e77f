"""How a Ray cluster is found or started, and how its devices become actor pools."""
