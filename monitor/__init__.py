"""Telemetry agent for every node: CPU, memory, network and link probes over MQTT.

Imports only the standard library, psutil, paho-mqtt and the message contract
(:mod:`adaptive.protocol`, standard library only), so it runs on a bare Raspberry Pi.
"""

import adaptive.protocol  # noqa: F401  (the contract; also resolves moved paths such as monitor.schema)
