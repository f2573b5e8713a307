"""Which sinks an agent runs: the log and the control socket's ring always, then whatever the
node-local `Outputs` turn on (design §3.13). One entry per kind of sink."""

from __future__ import annotations

import os

from agent.outputs import Outputs
from agent.runtime.fanout import Sink, SinkContext
from agent.runtime.hooks import make_hook_sinks
from agent.runtime.systemd import SystemdSink


def make_sinks(outputs: Outputs, ctx: SinkContext) -> list[Sink]:
    """The optional sinks `outputs` asks for (MQTT, hooks, metrics, systemd), not yet started.
    A sink whose set-up fails at run time (broker down, port in use) logs one line and keeps
    trying or stays off; it never stops the agent."""
    sinks: list[Sink] = []
    if outputs.mqtt is not None:  # aiomqtt and paho only when asked for
        from agent.runtime.mqtt import MqttSink  # noqa: PLC0415

        sinks.append(MqttSink(outputs.mqtt, ctx))
    if outputs.metrics is not None:  # prometheus_client (~45 ms, ~4 MB) only when asked for
        from agent.runtime.metrics import MetricsSink  # noqa: PLC0415

        sinks.append(MetricsSink(outputs.metrics, ctx))
    sinks += make_hook_sinks(outputs.hooks, ctx)  # one per [[hook]]
    if os.environ.get("NOTIFY_SOCKET"):  # started by systemd (Type=notify)
        sinks.append(SystemdSink(ctx.status))
    return sinks
