"""percept's plain-Python core (no Ray): config → sources → models → conductor → publish → subscribe."""
