"""Product training above the stages: the daily retrain from the event log, folding the log into
training data, and building one stage's examples from another stage's output."""
