"""phasespace: map the algorithmic phase space (Clock vs Pizza) of populations of small
transformers trained on modular addition, vmapped in JAX.

Entry points: :func:`phasespace.sweep.run_sweep` (or ``phasespace run``),
:func:`phasespace.store.load_sweep`, :func:`phasespace.population.build_population`,
:func:`phasespace.train.train_population`, :func:`phasespace.analysis.analyze_population`.
"""

__version__ = "0.1.0"
