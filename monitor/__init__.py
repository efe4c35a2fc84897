"""Telemetry agent for every node: CPU, memory, network and link probes over MQTT.

Imports only the standard library, psutil and paho-mqtt, so it runs on a bare Raspberry Pi.
"""
