"""Broadcast: one message to many connections, in this process and across processes.

- ``message``: :class:`~.message.Broadcast`, and its encoding between processes.
- ``registry``: :class:`~.registry.Rooms`, an app's connections in this process
  and their rooms, and delivery to them.
- ``brokers``: how a broadcast reaches every process's registry (in-process, Redis).
- ``servers``: the Redis servers a broker URL names (one, a Sentinel's master, a cluster).
- ``pubsub``: a link, one Redis server's publisher and subscriber in a process.
- ``cluster``: a link per Redis Cluster shard, each channel through its slot's shard.
"""
