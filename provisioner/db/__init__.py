"""The product database: the source of truth for what happened to each chip."""
