"""Studies: searches over job specs on Optuna, whose trials are ordinary jobs (issue 9).

``spec`` (the torch- and Optuna-free study spec), ``search`` (Optuna: sampler, pruner, the study and
its trials), ``pruning`` (a trial's job reports to its pruner), ``gain`` (the winner's gain over
training alone), ``service`` (create, advance, cancel: the database side). Nothing here imports torch;
only this package and ``migrations.study_storage`` import Optuna.
"""
