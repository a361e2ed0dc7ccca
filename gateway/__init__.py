"""Gateway: the public Recommend / Feedback API over the four stages."""
