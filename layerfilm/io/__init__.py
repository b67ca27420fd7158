"""Reading: where checkpoints are (storage), which they are (scan), their blocks, their formats, the cache
and the outputs written without risk to the user's files."""
