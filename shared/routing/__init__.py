"""The routing decision: the model catalog, difficulty estimators, the routing policy and answer confidence."""
