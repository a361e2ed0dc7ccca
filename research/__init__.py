"""Research above the stages: the simulated world's users against the stack, the daily-retrain
loop's reports, comparisons of runs and the end-to-end evaluation."""
