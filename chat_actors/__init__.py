"""The chat domain on an actor runtime.

- ``chat_actors.runtime``: actors, refs (``call`` / ``cast``), supervisors.
- ``chat_actors.session``: one supervised actor per live (user, room); ``registry`` finds or
  starts it; ``service.open_chat`` wires the whole chat side together.
- ``budget`` / ``tokens``: token budgets with tiktoken, offline; ``commands``: slash commands;
  ``upstream``: the OpenAI-compatible streaming client; ``outbox`` / ``frames``: what a socket is
  to a session.
"""
