"""Model weights: torch-free .pth reader, safetensors, key maps from official formats, the
download cache, and checkpoint loading."""
