"""`ftw data synth`: documents -> chunks -> a teacher model's grounded Q&A rows."""
