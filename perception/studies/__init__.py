"""``perception compare``: the studies behind the design (docs/why-deep.md)."""
