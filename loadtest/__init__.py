"""Load tests and benchmarks of the inference API, over HTTP like any client (``loadtest/README.md``).

One runner (:mod:`.driver`) runs every plan against servers it starts (:mod:`.stack`), reading
``/proc`` (:mod:`.cpu`) and the workers' metrics; :mod:`.results` holds the one definition of each
measure; ``compare``, ``tune``, ``accelerator`` and ``peers`` are plans with their report modules,
``chaos`` the fault scenarios. ``model_benchmark`` and ``gpu_benchmark`` time the model alone.
"""

__all__: list[str] = []
