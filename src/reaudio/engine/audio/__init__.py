"""Audio in and out: file reading, the log-mel front end, loudness, tags, post-processing, start clips."""
