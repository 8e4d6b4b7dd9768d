"""Library entry points for each job: align, augment, video. The CLI and the tests both call these."""
