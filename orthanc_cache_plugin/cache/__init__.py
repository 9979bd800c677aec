"""The cache itself: the policy (pure decisions), the controller that carries
them out against a store, single flights, warm-up and the admin API."""
