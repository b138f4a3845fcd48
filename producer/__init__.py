"""Event producers: replay of historical files, a live synthetic stream, and topic admin."""
