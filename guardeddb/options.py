"""``GuardOptions``: how a connection is guarded, in one frozen object.

Every entry point (``connect``, ``connect_async``, ``wrap``, ``wrap_async``,
``instrument``, ``guard_engine``, ``create_engine``) takes the same six
options, as keyword arguments or as one ``guard_options=GuardOptions(...)``, and
hands this object on; nothing below the entry points spells them again::

    opts = guardeddb.GuardOptions(policy="readonly", identity=guardeddb.Identity(user="etl"))
    conn = guardeddb.connect("sqlite:///shop.db", guard_options=opts)
    engine = guard_engine(engine, guard_options=opts)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .identity import Identity
from .policy import Policy, PolicySource, load_policy

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .approvals import ApprovalRequest

__all__ = ["DEFAULT_APPROVER_TIMEOUT", "GuardOptions"]

#: Seconds an ``approver`` callback has to answer before the query is refused.
DEFAULT_APPROVER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class GuardOptions:
    """The options of a guard, shared by every entry point.

    ``policy`` is a ``Policy``, a preset name (``"readonly"``), a YAML path or
    a dict; None means the ``agent-safe`` preset. ``identity`` is the
    connection's default identity (one bound with ``guardeddb.identity()``
    wins). The providers default to OpenTelemetry's global ones. ``approver``
    is asked, within ``approver_timeout`` seconds, about queries a ``review``
    rule holds. Frozen: one object can be handed to many connections and
    threads, and a change makes a new one (``dataclasses.replace``).
    """

    policy: PolicySource | None = None
    identity: Identity | None = None
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    approver: Callable[[ApprovalRequest], bool] | None = None
    approver_timeout: float = DEFAULT_APPROVER_TIMEOUT

    @classmethod
    def of(
        cls,
        options: GuardOptions | None,
        *,
        policy: PolicySource | None = None,
        identity: Identity | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        approver: Callable[[ApprovalRequest], bool] | None = None,
        approver_timeout: float = DEFAULT_APPROVER_TIMEOUT,
    ) -> GuardOptions:
        """An entry point's options, from ``options=`` or its keyword
        arguments (never both: which would win is a guess), policy loaded so
        that a bad one fails before anything is opened."""
        keywords = cls(
            policy, identity, tracer_provider, meter_provider, approver, approver_timeout
        )
        if options is None:
            return keywords.loaded()
        if not isinstance(options, GuardOptions):
            raise TypeError(f"options must be a GuardOptions, not {type(options).__name__}")
        if keywords != cls():
            raise TypeError(
                "give the guard options either as guard_options=GuardOptions(...) or as "
                "keyword arguments, not both"
            )
        return options.loaded()

    @property
    def given(self) -> bool:
        """Whether any option was set (the defaults mean "no preference"):
        re-guarding a connection ``instrument()`` guarded needs a reason."""
        return self != GuardOptions()

    def loaded(self) -> GuardOptions:
        """These options with the policy loaded into a ``Policy`` (None stays
        None: the default preset is built, once, when a guard needs it)."""
        if self.policy is None or isinstance(self.policy, Policy):
            return self
        return dataclasses.replace(self, policy=load_policy(self.policy))

    def policy_object(self) -> Policy:
        """The policy to enforce: the loaded one, or the ``agent-safe`` preset."""
        return load_policy(self.policy)
