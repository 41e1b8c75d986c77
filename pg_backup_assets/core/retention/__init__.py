"""GFS retention: tiers, a planner that says what to keep and why, and safe expiry."""
