"""What an analysis application imports: the Subscriber, wire decoding, the control client, CURVE keys.

Nothing here imports the daemon or the CLI (the import contract in pyproject.toml checks it).
"""
from ionstream.client.subscriber import Message, Subscriber

__all__ = ["Subscriber", "Message"]
