"""Client-facing routes: BFL drop-in, jobs, events, subscriptions, deliveries."""
