"""Image operations shared by every stage: resampling, dense CRF."""
