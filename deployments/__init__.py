"""Ray Serve bindings: thin shells over `pipeline/`, composed once in `graph.build_app`."""
