"""What runs in Ray's trial worker processes: the trainable Tune calls for each trial."""
