"""The pure model: profiles, latency and energy, plans, the planner, observations, rules' tables.

numpy only: no torch, MQTT, Gymnasium or sockets. The planner, the environments, the controller
and the source node all call this same code.
"""
