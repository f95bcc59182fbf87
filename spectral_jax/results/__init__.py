"""Per-image results of a pipeline run: boxes, masks and their refinement, cutouts, and the
result types the API and the server return."""
