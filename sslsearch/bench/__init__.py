"""What the pieces cost: kernels (augmentation, training steps, probe, packing), search (what
the search is worth), platform (the driver's cost at scale, with trials that only sleep)."""
