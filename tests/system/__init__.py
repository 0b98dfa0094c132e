"""System tests: durability, storage faults, stalls, load, soak, hostile inputs and secrets."""
