"""Layer 2, the data: audio I/O, the corpus table and its folds, label sets, datasets and
batching, the decode-once caches, text features, speech recognisers, augmentation, and the
importers of IEMOCAP and EmoBox releases. Imports only `models` and `utils` of the project."""
