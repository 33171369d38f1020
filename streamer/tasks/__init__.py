"""The model cards' other tasks, on whole files: voice activity and overlapped speech
detection, raw segmentation scores, resegmentation, and speaker embeddings."""
