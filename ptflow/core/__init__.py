"""The compiler and the process it runs in.

A composed config becomes a checked ``Plan`` of typed stage configs (``plan``, ``typed``,
``stage``), which the ``engine`` runs stage after stage, handing a typed ``Artifact``
forward (``artifact``, ``spec``). Around it: the stage cache and its content keys
(``stage_cache``, ``cache_key``), ``_target_`` resolution (``targets``), atomic files
(``files``), how a stopped process ends (``lifecycle``) and the error types (``errors``).

May import: nothing else of ptflow (torch, stdlib and Hydra's ``_locate`` only).
"""
