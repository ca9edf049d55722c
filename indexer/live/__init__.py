"""Live catalog changes: the journal beside an index, the overlay that serves it and the fold
that `--update` makes of it."""
