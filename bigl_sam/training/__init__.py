"""What every training command shares (`distill train`, `train`): options declared once (`config.py`), the
data order (`sampler.py`), schedules and seeded streams (`schedule.py`), checkpoints and resume (`state.py`),
logs (`runlog.py`), the optimizer (`optimizer.py`) and what `torchrun` processes agree on (`ranks.py`)."""
