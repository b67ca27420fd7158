"""Live films: a film kept up to date while the run trains (watch, the training callbacks)."""
