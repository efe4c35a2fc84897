"""The message contract between nodes, monitors and the controller: MQTT topics and records.

Standard library only, so a bare Raspberry Pi's monitor imports it. :mod:`~adaptive.protocol.fields`
holds the field checks, :mod:`~adaptive.protocol.messages` telemetry, status, plans, acks and
stats, :mod:`~adaptive.protocol.rules` the decision rules a controller gives a source node. JSON
Schemas of every payload, for other languages, are in ``adaptive/protocol/schemas/``.
"""
