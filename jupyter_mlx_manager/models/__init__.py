"""Models on disk: where they are, what they are, and the offline demo model."""
