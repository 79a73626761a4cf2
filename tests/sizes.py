"""The tiny run sizes of the CPU tests (conftest re-exports them, the shared trained run uses them)."""

# Small enough for seconds per run on 2 cores, large enough to train.
TINY = ["data=digits", "data.train_size=256", "data.val_size=128", "data.batch_size=64",
        "model.width=0.125", "compressor=quantize", "schedule.epochs=2", "schedule.warmup_epochs=1",
        "schedule.lr=0.05", "threads=1"]

# The 5-unit test model (tests/custom_model.py) for tests of the run's plumbing (resume, logs,
# figures, faults): a fraction of MobileNetV2's time; TINY alone keeps MobileNetV2 (width 0.125).
TEST_MODEL = ["model._target_=tests.custom_model.units", "model.width=0.5"]
