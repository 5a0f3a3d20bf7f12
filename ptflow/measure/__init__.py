"""Measuring: the latency protocol (``protocol``) and its statistics (``stats``), one speedup
interval over several processes (``hierarchy``), the device settings a run applies and the
facts it records (``device``, ``device_info``), the lock that keeps two runs from timing on
one device at once (``device_lock``), model facts (``modelinfo``) and the pictures of the
samples (``plots``).

May import: ``ptflow.core``, ``ptflow.inputs``.
"""
