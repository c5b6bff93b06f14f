"""The data layer: from a folder of photos (or a metadata file) to fitted, scaled batches:
indexing and reading metadata, filtering, the train/val split, fitting each image to the model
size with its padding mask, the decoded-image cache and the loader."""
