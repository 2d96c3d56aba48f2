"""Training: rendering a run (recipe + profile -> checked LLaMA-Factory configs), the planner's
report, and the train stage."""
