"""Data preparation: SLUE-VoxCeleb -> the data folder of docs/data_format.md, and a synthetic demo corpus."""
