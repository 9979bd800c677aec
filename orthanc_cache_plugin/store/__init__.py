"""Where entries live: the memory front, the disk store (diskcache) or the Redis
store, behind :class:`.facade.Store`; the state files beside the cache."""
