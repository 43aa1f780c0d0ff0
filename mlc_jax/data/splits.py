"""The split names every dataset has, in one place that imports nothing (drawing workers import it)."""
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")  # the splits evaluation protocols (eval.protocol) apply to
