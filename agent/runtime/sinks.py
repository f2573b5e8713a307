"""Which sinks an agent runs: the log and the control socket's ring always, then whatever the
node-local `Outputs` turn on (design §3.13). One entry per kind of sink."""

from __future__ import annotations

from agent.outputs import Outputs
from agent.runtime.fanout import Sink, SinkContext
from agent.runtime.mqtt import MqttSink


def make_sinks(outputs: Outputs, ctx: SinkContext) -> list[Sink]:
    """The optional sinks `outputs` asks for (MQTT, hooks, metrics, systemd), not yet started.
    A sink whose set-up fails at run time (broker down, port in use) logs one line and keeps
    trying or stays off; it never stops the agent."""
    sinks: list[Sink] = []
    if outputs.mqtt is not None:
        sinks.append(MqttSink(outputs.mqtt, ctx))
    return sinks
