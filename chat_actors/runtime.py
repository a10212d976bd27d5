"""The actor runtime in one import: actors, refs, messages that expect replies, supervisors."""

from chat_actors.actor import DEFAULT_MAILBOX_SIZE, Actor, ActorRef, Mailbox, Refuse, Request
from chat_actors.supervisor import ChildSpec, CrashHook, DynamicSupervisor, Restart, Supervisor
from core.errors import ActorDead, ActorError, MailboxFull, SupervisorGaveUp

__all__ = [
    "DEFAULT_MAILBOX_SIZE",
    "Actor",
    "ActorDead",
    "ActorError",
    "ActorRef",
    "ChildSpec",
    "CrashHook",
    "DynamicSupervisor",
    "Mailbox",
    "MailboxFull",
    "Refuse",
    "Request",
    "Restart",
    "Supervisor",
    "SupervisorGaveUp",
]
