"""The benchmark stage family: the stage (``stage``), the timing of one batch size
(``timing``), the untimed passes after it (``passes``: pictures, profile, roofline), the
profiler (``profile``) and the roofline figures (``roofline``)."""
